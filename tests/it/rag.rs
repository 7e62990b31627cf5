//! The RAG example (`examples/rag/rag.py`) against Copilot on its embedded default, nothing else:
//! the real all-MiniLM-L6-v2 embeds the documents and the questions, ChromaDB (installed by
//! `scripts/test`) stores and searches them, and the real Qwen2.5-Coder 0.5B answers from the
//! passages retrieved.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Copilot, tool};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("COPILOT_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME");
        Path::new(&home).join(".cache/copilot/models")
    });
    for file in ["all-minilm-l6-v2-f16.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"] {
        assert!(dir.join(file).exists(), "{} is missing: run `scripts/test` first", dir.join(file).display());
    }
    dir
}

/// Runs the example with `args`; returns its standard output, or fails with both outputs.
async fn rag(args: Vec<String>) -> String {
    let python = tool("PYTHON", ".tools/venv/bin/python", "python3");
    let mut command = Command::new(&python);
    command.arg("rag.py").args(&args).current_dir(Path::new(REPO).join("examples/rag"));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("run {python} rag.py (scripts/test installs chromadb): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "rag.py {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

fn line<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    stdout.lines().filter_map(|line| line.strip_prefix(prefix)).collect()
}

#[tokio::test]
async fn the_rag_example_retrieves_the_right_passage_and_answers_from_it_on_the_embedded_default() {
    // The embedded engine alone, with default routing: empty model names are its default models.
    let config = format!(
        "[providers.embedded]\nmodels_dir = {:?}\nollama_store = \"off\"\nthreads = 1\ncontext_length = 2048\n",
        models_dir().display().to_string()
    );
    let copilot = Copilot::start_with(&config, &[]).await;
    let db = tempfile::tempdir().unwrap();
    let common = |question: &str| {
        vec![
            "--address".to_string(),
            copilot.addr.to_string(),
            "--db".to_string(),
            db.path().display().to_string(),
            question.to_string(),
        ]
    };

    let stdout = rag(common("What time does the cafeteria open?")).await;
    assert_eq!(line(&stdout, "indexed: "), ["6 new of 6 documents"], "{stdout}");
    let retrieved = line(&stdout, "retrieved: ");
    assert_eq!(retrieved.len(), 2, "{stdout}");
    assert!(retrieved[0].starts_with("cafeteria (cosine distance "), "{stdout}");
    let answer = line(&stdout, "answer: ");
    // Greedy decoding of a fact stated in the passage.
    assert!(answer.len() == 1 && answer[0].contains("7:30"), "{stdout}");

    // The second run finds the vectors ChromaDB persisted and embeds only the question.
    for (question, document) in [
        ("How do I reset my password?", "passwords"),
        ("Can I deploy on a Friday?", "deploys"),
        ("Where do I park my electric car?", "parking"),
    ] {
        let stdout = rag(common(question)).await;
        assert_eq!(line(&stdout, "indexed: "), ["0 new of 6 documents"], "{stdout}");
        let retrieved = line(&stdout, "retrieved: ");
        assert!(retrieved[0].starts_with(&format!("{document} (")), "{question}: {stdout}");
        assert!(line(&stdout, "answer: ").first().is_some_and(|a| !a.trim().is_empty()), "{stdout}");
    }
}
