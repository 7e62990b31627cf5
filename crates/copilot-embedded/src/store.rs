//! Finds the GGUF models a user already has: a models directory, files named in the configuration,
//! and the models Ollama has pulled into its local store — so nothing has to be downloaded twice.
//!
//! Discovery only lists and reads headers (see [`crate::gguf`]); nothing is loaded. A source that is
//! absent is simply empty; a model whose file is unusable is still returned, with the reason, so a
//! request for it gets a clear error instead of "not found".

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::gguf::{self, GgufError, GgufInfo};

/// Where to look for models. Every source is optional; on a name collision an explicit entry wins
/// over the models directory, which wins over Ollama's store.
#[derive(Debug, Clone, Default)]
pub struct ModelSources {
    /// Every `*.gguf` directly inside it, named by file stem.
    pub models_dir: Option<PathBuf>,
    /// Explicit `name → file` entries.
    pub files: BTreeMap<String, PathBuf>,
    /// Root of an Ollama store (the directory holding `manifests/` and `blobs/`); see
    /// [`default_ollama_store`].
    pub ollama_store: Option<PathBuf>,
}

/// Which source a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Directory,
    Explicit,
    OllamaStore,
}

/// A model found on disk.
#[derive(Debug, Clone)]
pub struct LocalModel {
    pub name: String,
    pub path: PathBuf,
    pub origin: Origin,
    /// The file's header, or why it cannot be used.
    pub info: Result<GgufInfo, GgufError>,
    /// Ollama's default options for the model (its `params` layer), e.g.
    /// `{"stop": ["<|im_end|>"], "temperature": 0.7}`.
    pub ollama_params: Option<serde_json::Value>,
    /// Ollama's prompt template (a Go template, kept as text: we do not execute Go templates).
    pub ollama_template: Option<String>,
}

/// Ollama's store as Ollama itself finds it: `$OLLAMA_MODELS` if set, else `$HOME/.ollama/models`.
/// (A system-wide Linux install runs as user `ollama`, whose store is
/// `/usr/share/ollama/.ollama/models`; point `ollama_store` there explicitly for that.)
pub fn default_ollama_store() -> Option<PathBuf> {
    ollama_store_from(std::env::var_os("OLLAMA_MODELS"), std::env::var_os("HOME"))
}

/// [`default_ollama_store`] with the environment passed in. Empty values count as unset, as Ollama
/// treats them.
pub fn ollama_store_from(ollama_models: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    match (ollama_models.filter(|v| !v.is_empty()), home.filter(|v| !v.is_empty())) {
        (Some(models), _) => Some(PathBuf::from(models)),
        (None, Some(home)) => Some(PathBuf::from(home).join(".ollama").join("models")),
        (None, None) => None,
    }
}

/// All models the sources hold, sorted by name, each with its header read.
pub fn discover(sources: &ModelSources) -> Vec<LocalModel> {
    // Collect candidates first, lowest precedence first, so later sources overwrite earlier ones and
    // only the winners' headers are read.
    let mut found: BTreeMap<String, Candidate> = BTreeMap::new();
    let mut add = |candidate: Candidate| {
        if let Some(shadowed) = found.get(&candidate.name) {
            tracing::debug!(
                model = %candidate.name,
                kept = %candidate.path.display(),
                shadowed = %shadowed.path.display(),
                "two models share a name; the higher-precedence source wins"
            );
        }
        found.insert(candidate.name.clone(), candidate);
    };
    if let Some(root) = &sources.ollama_store {
        ollama_models(root).into_iter().for_each(&mut add);
    }
    if let Some(dir) = &sources.models_dir {
        directory_models(dir).into_iter().for_each(&mut add);
    }
    for (name, path) in &sources.files {
        add(Candidate::new(name.clone(), path.clone(), Origin::Explicit));
    }
    found
        .into_values()
        .map(|c| LocalModel {
            info: gguf::read_info(&c.path),
            name: c.name,
            path: c.path,
            origin: c.origin,
            ollama_params: c.ollama_params,
            ollama_template: c.ollama_template,
        })
        .collect()
}

struct Candidate {
    name: String,
    path: PathBuf,
    origin: Origin,
    ollama_params: Option<serde_json::Value>,
    ollama_template: Option<String>,
}

impl Candidate {
    fn new(name: String, path: PathBuf, origin: Origin) -> Self {
        Self { name, path, origin, ollama_params: None, ollama_template: None }
    }
}

/// Entries of a directory, or nothing: a directory that does not exist is an empty source, one
/// that cannot be read is worth a warning.
fn list_dir(dir: &Path, what: &str) -> Vec<fs::DirEntry> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(dir = %dir.display(), "no {what} here");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the {what}");
            Vec::new()
        }
    }
}

fn directory_models(dir: &Path) -> Vec<Candidate> {
    list_dir(dir, "models directory")
        .into_iter()
        .filter_map(|entry| {
            let path = entry.path();
            let is_gguf = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"));
            // `fs::metadata` follows symlinks: a link to a model elsewhere counts.
            if !is_gguf || !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                return None;
            }
            let stem = path.file_stem()?.to_str()?.to_owned();
            if is_later_split_part(&stem) {
                return None;
            }
            Some(Candidate::new(stem, path, Origin::Directory))
        })
        .collect()
}

/// `name-00002-of-00003`: the second and later parts of a split model. llama.cpp opens a split model
/// through its first part and finds the others itself, so only the first is a model.
fn is_later_split_part(stem: &str) -> bool {
    // "-NNNNN-of-NNNNN" is 15 bytes.
    let Some(suffix) = stem.len().checked_sub(15).and_then(|at| stem.get(at..)) else { return false };
    let b = suffix.as_bytes();
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    b[0] == b'-' && digits(1..6) && &b[6..10] == b"-of-" && digits(10..15) && &b[1..6] != b"00001"
}

const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
const PARAMS_LAYER: &str = "application/vnd.ollama.image.params";
const TEMPLATE_LAYER: &str = "application/vnd.ollama.image.template";
const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
/// Manifests, parameter and template layers are a few KiB; anything far bigger is not one.
const MAX_SMALL_FILE: u64 = 4 * 1024 * 1024;

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
}

/// Models in an Ollama store: `manifests/<host>/<namespace>/<model>/<tag>` point at `blobs/`.
fn ollama_models(root: &Path) -> Vec<Candidate> {
    let mut out = Vec::new();
    for host in list_dir(&root.join("manifests"), "Ollama store") {
        for namespace in list_dir(&host.path(), "Ollama manifests") {
            for model in list_dir(&namespace.path(), "Ollama manifests") {
                for tag in list_dir(&model.path(), "Ollama manifests") {
                    let manifest_path = tag.path();
                    let names = [&host, &namespace, &model, &tag].map(|e| e.file_name().into_string());
                    let [Ok(host), Ok(namespace), Ok(model), Ok(tag)] = names else {
                        let manifest = manifest_path.display();
                        tracing::warn!(%manifest, "skipping an Ollama manifest whose path is not UTF-8");
                        continue;
                    };
                    let name = ollama_name(&host, &namespace, &model, &tag);
                    if let Some(candidate) = ollama_model(root, name, &manifest_path) {
                        out.push(candidate);
                    }
                }
            }
        }
    }
    out
}

/// The name `ollama list` shows: the default host and `library` namespace are left out.
fn ollama_name(host: &str, namespace: &str, model: &str, tag: &str) -> String {
    match (host, namespace) {
        (DEFAULT_HOST, DEFAULT_NAMESPACE) => format!("{model}:{tag}"),
        (DEFAULT_HOST, _) => format!("{namespace}/{model}:{tag}"),
        _ => format!("{host}/{namespace}/{model}:{tag}"),
    }
}

fn ollama_model(root: &Path, name: String, manifest_path: &Path) -> Option<Candidate> {
    if !manifest_path.is_file() {
        return None;
    }
    let manifest: Manifest = match read_json(manifest_path) {
        Ok(manifest) => manifest,
        Err(e) => {
            let manifest = manifest_path.display();
            tracing::warn!(%manifest, error = %e, "skipping an unreadable Ollama manifest");
            return None;
        }
    };
    let layer_blob = |media_type: &str| -> Option<PathBuf> {
        let layer = manifest.layers.iter().find(|l| l.media_type == media_type)?;
        let blob = blob_path(root, &layer.digest);
        if blob.is_none() {
            let manifest = manifest_path.display();
            tracing::warn!(%manifest, digest = %layer.digest, "ignoring a layer with a malformed digest");
        }
        blob
    };
    let Some(model_blob) = layer_blob(MODEL_LAYER) else {
        // Cloud models and other non-local entries have no weights to run.
        tracing::debug!(manifest = %manifest_path.display(), "Ollama manifest without a local model layer");
        return None;
    };
    // Parameters and template are extras: without them the model still runs on our defaults.
    let ollama_params = layer_blob(PARAMS_LAYER).and_then(|blob| {
        read_json(&blob)
            .inspect_err(
                |e| tracing::warn!(blob = %blob.display(), error = %e, "ignoring unreadable Ollama parameters"),
            )
            .ok()
    });
    let ollama_template = layer_blob(TEMPLATE_LAYER).and_then(|blob| {
        read_small(&blob)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .inspect_err(
                |e| tracing::warn!(blob = %blob.display(), error = %e, "ignoring an unreadable Ollama template"),
            )
            .ok()
    });
    // A missing weights blob (an interrupted pull) is still listed: asking for the model then says
    // which file is missing instead of claiming the model does not exist.
    Some(Candidate { name, path: model_blob, origin: Origin::OllamaStore, ollama_params, ollama_template })
}

/// `sha256:<64 hex>` → `<root>/blobs/sha256-<hex>`. Anything else is refused: the digest comes from
/// a file and must not be able to point outside the store.
fn blob_path(root: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| root.join("blobs").join(format!("sha256-{hex}")))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<T> {
    serde_json::from_slice(&read_small(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(MAX_SMALL_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {MAX_SMALL_FILE} bytes")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::testutil::GgufBuilder;

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn gguf(arch: &str) -> Vec<u8> {
        GgufBuilder::sample(arch).build()
    }

    fn by_name(models: &[LocalModel]) -> BTreeMap<&str, &LocalModel> {
        models.iter().map(|m| (m.name.as_str(), m)).collect()
    }

    #[test]
    fn models_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("qwen2.5-coder-0.5b-instruct-q4.gguf"), &gguf("qwen2"));
        write(&dir.path().join("gemma.GGUF"), &gguf("gemma3"));
        write(&dir.path().join("notes.txt"), b"not a model");
        write(&dir.path().join("partial.gguf.part"), b"GGUF");
        write(&dir.path().join("big-00001-of-00002.gguf"), &gguf("llama"));
        write(&dir.path().join("big-00002-of-00002.gguf"), &gguf("llama"));
        fs::create_dir(dir.path().join("folder.gguf")).unwrap();

        let models = discover(&ModelSources { models_dir: Some(dir.path().into()), ..Default::default() });
        let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["big-00001-of-00002", "gemma", "qwen2.5-coder-0.5b-instruct-q4"]);
        let qwen = &models[2];
        assert_eq!(qwen.origin, Origin::Directory);
        assert_eq!(qwen.path, dir.path().join("qwen2.5-coder-0.5b-instruct-q4.gguf"));
        assert_eq!(qwen.info.as_ref().unwrap().architecture, "qwen2");
        assert!(qwen.ollama_params.is_none());
    }

    #[test]
    fn split_part_names() {
        assert!(is_later_split_part("m-00002-of-00003"));
        assert!(is_later_split_part("-00003-of-00003"));
        assert!(!is_later_split_part("m-00001-of-00003"));
        assert!(!is_later_split_part("m-0002-of-00003"));
        assert!(!is_later_split_part("qwen2.5-coder-0.5b-instruct-q4"));
        assert!(!is_later_split_part("short"));
        assert!(!is_later_split_part("ééééééééééééééé"));
    }

    #[test]
    fn missing_sources_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let sources = ModelSources {
            models_dir: Some(dir.path().join("nope")),
            files: BTreeMap::new(),
            ollama_store: Some(dir.path().join("no-ollama")),
        };
        assert!(discover(&sources).is_empty());
        assert!(discover(&ModelSources::default()).is_empty());
    }

    #[test]
    fn explicit_entries_win_and_are_kept_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let models_dir = dir.path().join("models");
        write(&models_dir.join("shared.gguf"), &gguf("qwen2"));
        write(&models_dir.join("other.gguf"), &gguf("qwen2"));
        let explicit = dir.path().join("elsewhere/mine.gguf");
        write(&explicit, &gguf("llama"));
        let corrupt = dir.path().join("corrupt.gguf");
        write(&corrupt, b"<html>not found</html>");

        let files = BTreeMap::from([
            ("shared".to_string(), explicit.clone()),
            ("missing".to_string(), dir.path().join("missing.gguf")),
            ("corrupt".to_string(), corrupt),
        ]);
        let models = discover(&ModelSources { models_dir: Some(models_dir), files, ollama_store: None });
        let models = by_name(&models);
        assert_eq!(models.keys().copied().collect::<Vec<_>>(), ["corrupt", "missing", "other", "shared"]);
        assert_eq!(models["shared"].origin, Origin::Explicit);
        assert_eq!(models["shared"].path, explicit);
        assert_eq!(models["shared"].info.as_ref().unwrap().architecture, "llama");
        assert!(matches!(models["missing"].info, Err(GgufError::Io { .. })));
        assert!(matches!(models["corrupt"].info, Err(GgufError::NotGguf { .. })));
        assert_eq!(models["other"].origin, Origin::Directory);
    }

    /// Writes a blob and returns its digest (a made-up one: the store does not verify hashes).
    fn blob(root: &Path, seed: u8, bytes: &[u8]) -> String {
        let hex: String = std::iter::repeat_n(format!("{seed:02x}"), 32).collect();
        write(&root.join("blobs").join(format!("sha256-{hex}")), bytes);
        format!("sha256:{hex}")
    }

    fn manifest(root: &Path, rel: &str, layers: &[(&str, &str)]) {
        let layers: Vec<_> = layers
            .iter()
            .map(|(media_type, digest)| serde_json::json!({"mediaType": media_type, "digest": digest, "size": 1}))
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:00", "size": 2},
            "layers": layers,
        });
        write(&root.join("manifests").join(rel), manifest.to_string().as_bytes());
    }

    #[test]
    fn ollama_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let weights = blob(root, 1, &gguf("llama"));
        let params = blob(root, 2, br#"{"stop":["<|im_end|>"],"temperature":0.7}"#);
        let template = blob(root, 3, b"{{ .Prompt }}");
        let qwen = blob(root, 4, &gguf("qwen2"));
        manifest(
            root,
            "registry.ollama.ai/library/llama3.2/3b",
            &[(MODEL_LAYER, &weights), (TEMPLATE_LAYER, &template), (PARAMS_LAYER, &params)],
        );
        manifest(root, "registry.ollama.ai/someone/coder/latest", &[(MODEL_LAYER, &qwen)]);
        manifest(root, "hf.co/bartowski/Qwen2.5-GGUF/Q4_K_M", &[(MODEL_LAYER, &qwen)]);
        // Weights never downloaded: listed, with the missing file as the error.
        let absent = format!("sha256:{}", "ab".repeat(32));
        manifest(root, "registry.ollama.ai/library/broken/latest", &[(MODEL_LAYER, &absent)]);
        // Parameters blob missing: the model is still fine.
        manifest(
            root,
            "registry.ollama.ai/library/noparams/latest",
            &[(MODEL_LAYER, &weights), (PARAMS_LAYER, &absent)],
        );
        // Skipped: malformed JSON, no model layer (a cloud model), a digest escaping the store.
        write(&root.join("manifests/registry.ollama.ai/library/garbled/latest"), b"{not json");
        manifest(root, "registry.ollama.ai/library/cloudy/latest", &[(PARAMS_LAYER, &params)]);
        manifest(root, "registry.ollama.ai/library/escape/latest", &[(MODEL_LAYER, "sha256:../../../etc/passwd")]);

        let models = discover(&ModelSources { ollama_store: Some(root.into()), ..Default::default() });
        let models = by_name(&models);
        assert_eq!(
            models.keys().copied().collect::<Vec<_>>(),
            [
                "broken:latest",
                "hf.co/bartowski/Qwen2.5-GGUF:Q4_K_M",
                "llama3.2:3b",
                "noparams:latest",
                "someone/coder:latest"
            ]
        );
        let llama = models["llama3.2:3b"];
        assert_eq!(llama.origin, Origin::OllamaStore);
        assert_eq!(llama.path, blob_path(root, &weights).unwrap());
        assert_eq!(llama.info.as_ref().unwrap().architecture, "llama");
        assert_eq!(llama.ollama_params, Some(serde_json::json!({"stop": ["<|im_end|>"], "temperature": 0.7})));
        assert_eq!(llama.ollama_template.as_deref(), Some("{{ .Prompt }}"));
        assert_eq!(models["someone/coder:latest"].info.as_ref().unwrap().architecture, "qwen2");
        assert!(models["someone/coder:latest"].ollama_params.is_none());
        match &models["broken:latest"].info {
            Err(e @ GgufError::Io { .. }) => assert!(e.to_string().contains(&"ab".repeat(32)), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(models["noparams:latest"].info.is_ok());
        assert!(models["noparams:latest"].ollama_params.is_none());
    }

    #[test]
    fn precedence_across_all_sources() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("ollama");
        let weights = blob(&store, 1, &gguf("llama"));
        manifest(&store, "registry.ollama.ai/library/tiny/latest", &[(MODEL_LAYER, &weights)]);
        let models_dir = dir.path().join("models");
        write(&models_dir.join("tiny:latest.gguf"), &gguf("qwen2"));

        let sources =
            ModelSources { models_dir: Some(models_dir.clone()), files: BTreeMap::new(), ollama_store: Some(store) };
        let models = discover(&sources);
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].origin, Origin::Directory);

        let files = BTreeMap::from([("tiny:latest".to_string(), models_dir.join("tiny:latest.gguf"))]);
        let models = discover(&ModelSources { files, ..sources });
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].origin, Origin::Explicit);
    }

    #[test]
    fn ollama_store_location() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(ollama_store_from(os("/data/ollama"), os("/home/me")), Some(PathBuf::from("/data/ollama")));
        assert_eq!(ollama_store_from(None, os("/home/me")), Some(PathBuf::from("/home/me/.ollama/models")));
        assert_eq!(ollama_store_from(os(""), os("/home/me")), Some(PathBuf::from("/home/me/.ollama/models")));
        assert_eq!(ollama_store_from(None, None), None);
        assert_eq!(ollama_store_from(os(""), os("")), None);
    }
}
