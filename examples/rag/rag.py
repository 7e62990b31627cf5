"""Retrieval-augmented generation through Copilot, on one machine: embed documents with `Embed`,
keep the vectors in ChromaDB (embedded, in process), retrieve the passages closest to a question,
and answer it with `Chat` from those passages.

    python rag.py [--address localhost:50051] [--db DIR] "What time does the cafeteria open?"

Against Copilot on its embedded default (`scripts/serve`) everything stays local: the embedding
model (all-MiniLM-L6-v2) and the chat model (Qwen2.5-Coder 0.5B) run inside Copilot, ChromaDB inside
this process, and nothing is sent anywhere else. Empty model names mean Copilot's defaults
(`routing.default_embedding_model`, `routing.default_model`); name others with --embedding-model
and --model (e.g. `ollama/nomic-embed-text` and `ollama/llama3.2:3b`).

ChromaDB is always given the vectors (`embeddings=`, `query_embeddings=`) and no embedding function,
so it never downloads a model of its own.
"""

import argparse
import sys
from pathlib import Path

import chromadb
from chromadb.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from client import connect, error_reason  # noqa: E402  (the Python example's client)
from copilot_stubs import pb  # noqa: E402

import grpc  # noqa: E402

DOCUMENTS = Path(__file__).resolve().parent / "documents"
COLLECTION = "documents"
SYSTEM = (
    "Answer the question using only the context below. If the context does not say, answer "
    "that you do not know. Answer in one or two sentences."
)


def embed(stub, model, texts, task, timeout=60.0):
    """One vector per text, in order, each of unit length (Copilot normalises every provider's)."""
    response = stub.Embed(pb.EmbedRequest(model=model, inputs=texts, task=task), timeout=timeout)
    return [list(e.values) for e in response.embeddings], response.model


def load_documents(directory=DOCUMENTS):
    """(id, text) for each Markdown file: the file name without its suffix is the id."""
    return [(path.stem, path.read_text(encoding="utf-8").strip()) for path in sorted(directory.glob("*.md"))]


def open_collection(db_dir=None):
    """A cosine-distance collection, persisted in `db_dir` if given, else in memory."""
    settings = Settings(anonymized_telemetry=False)
    client = chromadb.PersistentClient(path=db_dir, settings=settings) if db_dir else chromadb.EphemeralClient(settings)
    return client.get_or_create_collection(COLLECTION, embedding_function=None, metadata={"hnsw:space": "cosine"})


def index(stub, collection, documents, model=""):
    """Embeds the documents that are not in the collection yet and stores them with their vectors."""
    known = set(collection.get(ids=[doc_id for doc_id, _ in documents])["ids"])
    new = [(doc_id, text) for doc_id, text in documents if doc_id not in known]
    if new:
        vectors, _ = embed(stub, model, [text for _, text in new], pb.EMBEDDING_TASK_DOCUMENT)
        collection.add(ids=[d for d, _ in new], documents=[t for _, t in new], embeddings=vectors)
    return len(new)


def retrieve(stub, collection, question, k=2, model=""):
    """The k passages closest to the question: [(id, distance, text)], closest first."""
    [vector], _ = embed(stub, model, [question], pb.EMBEDDING_TASK_QUERY)
    found = collection.query(query_embeddings=[vector], n_results=k)
    return list(zip(found["ids"][0], found["distances"][0], found["documents"][0]))


def answer(stub, question, passages, model="", timeout=120.0):
    """Chat's answer to the question from the passages (streamed, then joined)."""
    context = "\n\n".join(text for _, _, text in passages)
    request = pb.ChatRequest(
        model=model,
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, content=f"{SYSTEM}\n\nContext:\n{context}"),
            pb.Message(role=pb.ROLE_USER, content=question),
        ],
        options=pb.GenerationOptions(temperature=0.0, max_tokens=96),
    )
    return "".join(chunk.content for chunk in stub.Chat(request, timeout=timeout)).strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--model", default="", help="chat model (empty: Copilot's default)")
    parser.add_argument("--embedding-model", default="", help="embedding model (empty: Copilot's default)")
    parser.add_argument("--db", help="keep the vectors in this directory (default: in memory)")
    parser.add_argument("-k", type=int, default=2, help="passages to retrieve")
    args = parser.parse_args()

    stub = connect(args.address)
    try:
        collection = open_collection(args.db)
        added = index(stub, collection, load_documents(), args.embedding_model)
        print(f"indexed: {added} new of {collection.count()} documents")
        passages = retrieve(stub, collection, args.question, args.k, args.embedding_model)
        for doc_id, distance, _ in passages:
            print(f"retrieved: {doc_id} (cosine distance {distance:.3f})")
        print(f"answer: {answer(stub, args.question, passages, args.model)}")
    except grpc.RpcError as error:
        print(f"{error.code().name} ({error_reason(error)}): {error.details()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
