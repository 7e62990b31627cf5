//! An embedding answer checked and made uniform, once, for every provider: one vector per input,
//! all of one length, finite and not zero, each scaled to unit length (L2), so the cosine of two
//! vectors is their dot product whichever provider made them (Ollama and OpenAI normalise, Gemini
//! only at full size, llama.cpp in process never).

use copilot_provider::{Embeddings, ProviderError};

use crate::error::GatewayError;
use crate::router::Target;

/// The vectors of an `Embed` call, as clients get them.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The model that answered, in routable `provider/model` form.
    pub model: String,
    /// One per input, in order, each of unit length.
    pub vectors: Vec<Vec<f32>>,
    pub dimensions: u32,
    pub input_tokens: Option<u32>,
}

/// `embeddings` for `inputs` inputs, checked and normalised; an upstream that broke the contract is
/// its protocol error.
pub fn checked(target: &Target, inputs: usize, embeddings: Embeddings) -> Result<Embedded, GatewayError> {
    let protocol = |message: String| GatewayError::Provider {
        target: target.name(),
        error: ProviderError::Protocol(message),
        chunks_sent: 0,
    };
    let Embeddings { mut vectors, model, input_tokens } = embeddings;
    if vectors.len() != inputs {
        return Err(protocol(format!("{} embeddings came back for {inputs} inputs", vectors.len())));
    }
    let dimensions = vectors.first().map_or(0, Vec::len);
    if dimensions == 0 {
        return Err(protocol("an embedding came back empty".into()));
    }
    for (index, vector) in vectors.iter_mut().enumerate() {
        if vector.len() != dimensions {
            return Err(protocol(format!(
                "embedding {index} has {} dimensions where the first has {dimensions}",
                vector.len()
            )));
        }
        // Summed in f64: a 4,096-dimension sum of squares in f32 loses the digits that matter.
        let norm = vector.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(protocol(format!("embedding {index} is zero or not finite, so it has no direction")));
        }
        for value in vector.iter_mut() {
            *value = (f64::from(*value) / norm) as f32;
        }
    }
    let answered_by = if model.is_empty() { &target.model } else { &model };
    Ok(Embedded {
        model: format!("{}/{}", target.instance.name, answered_by),
        vectors,
        dimensions: u32::try_from(dimensions).unwrap_or(u32::MAX),
        input_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        let instance = crate::router::tests::instance("up");
        Target { instance: std::sync::Arc::new(instance), model: "embedder".into() }
    }

    fn embeddings(vectors: Vec<Vec<f32>>) -> Embeddings {
        Embeddings { vectors, model: String::new(), input_tokens: Some(3) }
    }

    #[test]
    fn vectors_come_back_in_order_at_unit_length() {
        let embedded = checked(&target(), 2, embeddings(vec![vec![3.0, 4.0], vec![0.0, -2.0]])).unwrap();
        assert_eq!(embedded.vectors, [vec![0.6, 0.8], vec![0.0, -1.0]]);
        assert_eq!((embedded.dimensions, embedded.input_tokens), (2, Some(3)));
        assert_eq!(embedded.model, "up/embedder");
    }

    #[test]
    fn a_broken_answer_is_a_protocol_error() {
        let cases = [
            (embeddings(vec![vec![1.0]]), 2, "1 embeddings came back for 2 inputs"),
            (embeddings(vec![vec![]]), 1, "came back empty"),
            (embeddings(vec![vec![1.0, 0.0], vec![1.0]]), 2, "embedding 1 has 1 dimensions"),
            (embeddings(vec![vec![0.0, 0.0]]), 1, "embedding 0 is zero"),
            (embeddings(vec![vec![f32::NAN, 1.0]]), 1, "not finite"),
            (embeddings(vec![vec![f32::INFINITY, 1.0]]), 1, "not finite"),
        ];
        for (answer, inputs, expected) in cases {
            let error = checked(&target(), inputs, answer).unwrap_err();
            assert!(
                matches!(&error, GatewayError::Provider { error: ProviderError::Protocol(m), .. } if m.contains(expected)),
                "{expected}: {error:?}"
            );
        }
    }
}
