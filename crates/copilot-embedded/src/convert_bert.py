# Writes a sentence-transformers BERT checkpoint (config.json, vocab.txt, model.safetensors,
# 1_Pooling/config.json) as an f16 GGUF with llama.cpp's own `gguf` package.
#
#   python3 convert_bert.py SOURCE_DIR OUTPUT_FILE
#
# It does what llama.cpp's convert_hf_to_gguf.py does for a BertModel (same keys, same tensor
# names, same types: matrices in f16, norms, biases and the position/token-type tables in f32), so
# its output is byte-identical to `convert-hf-to-gguf --outtype f16` for the catalog's MiniLM, but
# it needs only gguf, safetensors and numpy rather than torch and transformers. `copilot models
# fetch` runs it and pins the output by size and sha256, so any drift fails loudly there.
# The general.* values are those the converter derives from the model's card for MiniLM-L6-v2.
import json
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Tensors the GGUF graph has no use for.
SKIPPED = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
# Lookup tables llama.cpp reads in f32 even in an f16 file.
KEPT_F32 = {"position_embd.weight", "token_types.weight"}


def main(source, output):
    config = json.load(open(f"{source}/config.json", encoding="utf-8"))
    pooling = json.load(open(f"{source}/1_Pooling/config.json", encoding="utf-8"))
    if config.get("architectures") != ["BertModel"]:
        sys.exit(f"convert_bert.py: {source} holds {config.get('architectures')}, not a BertModel")
    if not pooling.get("pooling_mode_mean_tokens"):
        sys.exit(f"convert_bert.py: {source} does not pool by mean; only mean pooling is mapped")
    layers = config["num_hidden_layers"]

    writer = gguf.GGUFWriter(output, "bert")
    writer.add_type("model")
    writer.add_name("MiniLM L6 H384 Uncased")
    writer.add_version("v2")
    writer.add_organization("Nreimers")
    writer.add_basename("sentence-transformers__all-MiniLM-L6")
    writer.add_size_label("23M")
    writer.add_block_count(layers)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    vocab = [line.rstrip("\n") for line in open(f"{source}/vocab.txt", encoding="utf-8")]
    # WordPiece marks word continuations with "##"; llama.cpp's BERT tokenizer wants word starts
    # marked with U+2581 instead, as the converter rewrites them.
    tokens = [t if t in SPECIAL else (t[2:] if t.startswith("##") else "\u2581" + t) for t in vocab]
    types = [gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.NORMAL for t in vocab]
    writer.add_token_type_count(config["type_vocab_size"])
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("jina-v2-en")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    index = {t: i for i, t in enumerate(vocab)}
    writer.add_bos_token_id(index["[CLS]"])
    writer.add_eos_token_id(index["[SEP]"])
    writer.add_unk_token_id(index["[UNK]"])
    writer.add_sep_token_id(index["[SEP]"])
    writer.add_pad_token_id(index["[PAD]"])
    writer.add_mask_token_id(index["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, layers)
    for name, tensor in load_file(f"{source}/model.safetensors").items():
        if name in SKIPPED:
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            sys.exit(f"convert_bert.py: no GGUF name for tensor {name}")
        half = tensor.ndim > 1 and new_name not in KEPT_F32
        writer.add_tensor(new_name, tensor.astype(np.float16 if half else np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: convert_bert.py SOURCE_DIR OUTPUT_FILE")
    main(sys.argv[1], sys.argv[2])
