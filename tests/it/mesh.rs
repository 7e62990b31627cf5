//! gRPC health and server reflection (v1 and v1alpha), as probes, meshes and grpcurl use them.

use copilot_fakes::FakeOllama;
use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::Copilot;

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_api() {
    let fake = FakeOllama::start().await;
    let copilot = Copilot::start(&fake, &[]).await;
    let mut health = HealthClient::new(copilot.channel().await);

    for service in ["", "copilot.v1.Copilot"] {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(response.into_inner().status(), ServingStatus::Serving, "{service:?}");
    }
    let status = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let mut watch =
        health.watch(HealthCheckRequest { service: "copilot.v1.Copilot".into() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);
}

macro_rules! reflection_test {
    ($name:ident, $version:ident) => {
        #[tokio::test]
        async fn $name() {
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

            let fake = FakeOllama::start().await;
            let copilot = Copilot::start(&fake, &[]).await;
            let mut client = ServerReflectionClient::new(copilot.channel().await);
            let ask = |request: MessageRequest| {
                tokio_stream::iter([ServerReflectionRequest { host: String::new(), message_request: Some(request) }])
            };

            let mut responses = client
                .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
                .await
                .unwrap()
                .into_inner();
            let Some(MessageResponse::ListServicesResponse(list)) =
                responses.next().await.unwrap().unwrap().message_response
            else {
                panic!("expected a service list")
            };
            let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
            for expected in ["copilot.v1.Copilot", "grpc.health.v1.Health"] {
                assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
            }

            // grpcurl's `describe` asks for the file that defines a symbol, with its imports.
            let mut responses = client
                .server_reflection_info(ask(MessageRequest::FileContainingSymbol("copilot.v1.Copilot".into())))
                .await
                .unwrap()
                .into_inner();
            let Some(MessageResponse::FileDescriptorResponse(files)) =
                responses.next().await.unwrap().unwrap().message_response
            else {
                panic!("expected file descriptors")
            };
            let files: Vec<prost_types::FileDescriptorProto> = files
                .file_descriptor_proto
                .iter()
                .map(|bytes| prost::Message::decode(bytes.as_slice()).unwrap())
                .collect();
            let copilot_file = files.iter().find(|f| f.package() == "copilot.v1").expect("copilot.v1 file");
            let rpcs: Vec<_> = copilot_file.service[0].method.iter().map(|m| m.name().to_string()).collect();
            assert_eq!(rpcs, ["Generate", "Chat", "ListModels", "GetModel", "Embed", "CountTokens"]);

            // Clients then fetch each import by file name; every one must resolve.
            for dependency in &copilot_file.dependency {
                let mut responses = client
                    .server_reflection_info(ask(MessageRequest::FileByFilename(dependency.clone())))
                    .await
                    .unwrap()
                    .into_inner();
                let response = responses.next().await.unwrap().unwrap().message_response;
                assert!(
                    matches!(response, Some(MessageResponse::FileDescriptorResponse(_))),
                    "import {dependency} not served: {response:?}"
                );
            }
            assert!(copilot_file.dependency.iter().any(|d| d == "google/protobuf/duration.proto"));
        }
    };
}

reflection_test!(reflection_v1_lists_and_describes_the_api, v1);
reflection_test!(reflection_v1alpha_lists_and_describes_the_api, v1alpha);
