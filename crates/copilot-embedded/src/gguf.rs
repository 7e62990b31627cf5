//! Reads and validates the header of a GGUF model file without llama.cpp.
//!
//! Two jobs: listing models cheaply (architecture, context length, parameter count, quantization,
//! chat template, special tokens) and refusing a corrupt or truncated file with an error that names
//! it *before* llama.cpp maps it — a bad file must never take the server down.
//!
//! The file is untrusted input. Every length and count it declares is checked against the bytes
//! actually left in the file before anything is allocated or skipped, so a hostile header cannot make
//! us allocate gigabytes; large arrays (tokenizer vocabularies, merges, scores) are skipped, not kept.
//!
//! Format (v2/v3, little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/value pairs, the tensor descriptions, padding to `general.alignment`, tensor data.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the header of a GGUF file says about the model in it.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    /// `general.architecture`, e.g. `llama`, `qwen2`, `gemma3`.
    pub architecture: String,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.size_label`, e.g. `0.5B`.
    pub size_label: Option<String>,
    /// `<architecture>.context_length`: the context the model was trained for.
    pub context_length: Option<u32>,
    /// Sum over all tensors of the number of elements.
    pub parameter_count: u64,
    /// `general.file_type`: llama.cpp's `llama_ftype`, see [`GgufInfo::quantization`].
    pub file_type: Option<u32>,
    /// `tokenizer.chat_template` (a Jinja template).
    pub chat_template: Option<String>,
    /// Text of the token `tokenizer.ggml.bos_token_id`.
    pub bos_token: Option<String>,
    /// Text of the token `tokenizer.ggml.eos_token_id`.
    pub eos_token: Option<String>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// `<architecture>.embedding_length`: the width of the model's hidden states (and of its
    /// embeddings, for an embedding model).
    pub embedding_length: Option<u32>,
    /// `<architecture>.pooling_type`, llama.cpp's `llama_pooling_type`: written only for models
    /// meant to embed (1 mean, 2 CLS, 3 last token; 4 is a reranker's).
    pub pooling_type: Option<u32>,
}

impl GgufInfo {
    /// The quantization as llama.cpp names its `LLAMA_FTYPE_*` values (`Q4_K_M`, `F16`, ...), or an
    /// empty string when the file does not say or uses a type this table does not know.
    pub fn quantization(&self) -> String {
        self.file_type.and_then(ftype_name).unwrap_or_default().to_owned()
    }

    /// Whether the model is an embedding model: one whose file declares how its token states are
    /// pooled into one vector (mean, CLS or last token). Such models get `Embed`, never `Chat`.
    pub fn is_embedding_model(&self) -> bool {
        matches!(self.pooling_type, Some(1..=3))
    }

    /// The parameter count the way Ollama shows it (`format.HumanNumber`): `494.03M`, `3.2B`, `8B`.
    pub fn parameter_size(&self) -> String {
        human_number(self.parameter_count)
    }
}

/// Why a file could not be read as a GGUF model. Every message names the file.
///
/// `Clone` (hence the `Arc` around the I/O error) because the model catalog hands out copies of its
/// entries, errors included.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read model file {}: {source}", path.display())]
    Io { path: PathBuf, source: Arc<io::Error> },
    #[error(
        "{} is not a GGUF model file: it does not start with the bytes \"GGUF\" \
         (an HTML page or a Git LFS pointer saved instead of the model?)",
        path.display()
    )]
    NotGguf { path: PathBuf },
    #[error(
        "{} is GGUF version {version}, but only versions 2 and 3 are supported{}",
        path.display(),
        version_hint(*version)
    )]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{} is a corrupt GGUF file: {detail}; download or convert it again", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{} is truncated: it should be at least {expected} bytes but has {actual} \
         (an interrupted download?); download it again",
        path.display()
    )]
    Truncated { path: PathBuf, expected: u64, actual: u64 },
}

fn version_hint(version: u32) -> &'static str {
    match version {
        1 => " (GGUF v1 files need converting again with a current llama.cpp)",
        // A little-endian reader sees a big-endian 2 or 3 as 0x02000000 / 0x03000000.
        v if v & 0xFFFF == 0 => " (is it a big-endian file?)",
        _ => "",
    }
}

/// Reads the header of the GGUF file at `path` and checks that the file is long enough to hold the
/// tensor data the header describes.
pub fn read_info(path: &Path) -> Result<GgufInfo, GgufError> {
    let io_err = |source| GgufError::Io { path: path.to_owned(), source: Arc::new(source) };
    let file = File::open(path).map_err(io_err)?;
    let file_size = file.metadata().map_err(io_err)?.len();
    let mut reader = Reader { inner: BufReader::with_capacity(64 * 1024, file), pos: 0, file_size, path };
    parse(&mut reader)
}

/// Upper bound for a single string. Chat templates are a few KiB and tokens a few bytes; anything
/// near this is not a model we want to parse.
const MAX_STRING_LEN: u64 = 64 * 1024 * 1024;
/// Keys and tensor names are short identifiers; llama.cpp caps tensor names at 64 bytes.
const MAX_KEY_LEN: u64 = 64 * 1024;
/// llama.cpp's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

// GGUF metadata value types.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// A metadata value we keep. Floats are skipped: nothing we report is a float.
enum Value {
    Uint(u64),
    Int(i64),
    Bool(bool),
    Str(String),
    Other,
}

impl Value {
    fn into_string(self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }
}

/// Position-tracking reader: every read is checked against the file size first so a short file is
/// reported as truncated at a known offset rather than as an opaque EOF.
struct Reader<'a> {
    inner: BufReader<File>,
    pos: u64,
    file_size: u64,
    path: &'a Path,
}

impl Reader<'_> {
    fn corrupt(&self, detail: impl Into<String>) -> GgufError {
        GgufError::Corrupt { path: self.path.to_owned(), detail: detail.into() }
    }

    fn io(&self, source: io::Error) -> GgufError {
        GgufError::Io { path: self.path.to_owned(), source: Arc::new(source) }
    }

    /// Fails with `Truncated` unless `n` more bytes exist.
    fn need(&self, n: u64) -> Result<(), GgufError> {
        let end = self.pos.saturating_add(n);
        if end > self.file_size {
            return Err(GgufError::Truncated { path: self.path.to_owned(), expected: end, actual: self.file_size });
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        self.need(N as u64)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| self.io(e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.bytes::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        self.need(n)?;
        // `need` bounds n by the file size, which fits in i64 for any real file.
        let offset = i64::try_from(n).map_err(|_| self.corrupt("length out of range"))?;
        self.inner.seek_relative(offset).map_err(|e| self.io(e))?;
        self.pos += n;
        Ok(())
    }

    fn seek_to(&mut self, pos: u64) -> Result<(), GgufError> {
        self.inner.seek(SeekFrom::Start(pos)).map_err(|e| self.io(e))?;
        self.pos = pos;
        Ok(())
    }

    /// Reads a string's length and checks it is plausible: a length beyond the cap or the whole file
    /// is corruption, not truncation, and must never reach an allocation.
    fn string_len(&mut self, what: &str, cap: u64) -> Result<u64, GgufError> {
        let at = self.pos;
        let len = self.u64()?;
        if len > cap || len > self.file_size {
            return Err(self.corrupt(format!(
                "{what} at byte {at} claims a length of {len} bytes (the file has {})",
                self.file_size
            )));
        }
        Ok(len)
    }

    fn string(&mut self, what: &str, cap: u64) -> Result<String, GgufError> {
        let len = self.string_len(what, cap)?;
        self.need(len)?;
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(|e| self.io(e))?;
        self.pos += len;
        // The spec says UTF-8; a stray invalid byte in a name is no reason to reject the model.
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn skip_string(&mut self, what: &str) -> Result<(), GgufError> {
        let len = self.string_len(what, MAX_STRING_LEN)?;
        self.skip(len)
    }

    /// Reads a scalar or string value of type `ty`; arrays are skipped.
    fn value(&mut self, key: &str, ty: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            T_U8 => Value::Uint(self.u8()?.into()),
            T_I8 => Value::Int(i8::from_le_bytes(self.bytes()?).into()),
            T_U16 => Value::Uint(u16::from_le_bytes(self.bytes()?).into()),
            T_I16 => Value::Int(i16::from_le_bytes(self.bytes()?).into()),
            T_U32 => Value::Uint(self.u32()?.into()),
            T_I32 => Value::Int(i32::from_le_bytes(self.bytes()?).into()),
            T_U64 => Value::Uint(self.u64()?),
            T_I64 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            T_BOOL => Value::Bool(self.u8()? != 0),
            T_STRING => Value::Str(self.string(&format!("value of {key}"), MAX_STRING_LEN)?),
            _ => {
                self.skip_value(key, ty, 0)?;
                Value::Other
            }
        })
    }

    /// Skips a value of type `ty` without keeping it.
    fn skip_value(&mut self, key: &str, ty: u32, depth: u32) -> Result<(), GgufError> {
        match ty {
            T_STRING => self.skip_string(&format!("value of {key}")),
            T_ARRAY => {
                // Arrays of arrays are legal but never used; bound the nesting so a hostile file
                // cannot recurse us off the stack.
                if depth >= 4 {
                    return Err(self.corrupt(format!("{key} nests arrays more than 4 deep")));
                }
                let (item_ty, count) = self.array_header(key)?;
                match fixed_size(item_ty) {
                    Some(size) => self.skip(count * size),
                    None => (0..count).try_for_each(|_| self.skip_value(key, item_ty, depth + 1)),
                }
            }
            _ => match fixed_size(ty) {
                Some(size) => self.skip(size),
                None => Err(self.corrupt(format!("{key} has unknown value type {ty}"))),
            },
        }
    }

    /// Reads an array's item type and count, and checks the count against the smallest encoding of
    /// that many items so no later loop or skip can run past a plausible bound.
    fn array_header(&mut self, key: &str) -> Result<(u32, u64), GgufError> {
        let item_ty = self.u32()?;
        let count = self.u64()?;
        let min_item = match item_ty {
            T_STRING => 8,
            T_ARRAY => 12,
            ty => fixed_size(ty).ok_or_else(|| self.corrupt(format!("{key} is an array of unknown type {ty}")))?,
        };
        if count.checked_mul(min_item).is_none_or(|bytes| bytes > self.file_size) {
            return Err(self.corrupt(format!(
                "{key} claims {count} items, more than the file's {} bytes can hold",
                self.file_size
            )));
        }
        Ok((item_ty, count))
    }
}

/// Encoded size of a fixed-size value type; `None` for strings, arrays and unknown types.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        T_U8 | T_I8 | T_BOOL => Some(1),
        T_U16 | T_I16 => Some(2),
        T_U32 | T_I32 | T_F32 => Some(4),
        T_U64 | T_I64 | T_F64 => Some(8),
        _ => None,
    }
}

fn parse(r: &mut Reader<'_>) -> Result<GgufInfo, GgufError> {
    // Read what there is of the magic first: a short file that is not even a prefix of "GGUF" is
    // "not a model", while an empty or cut-off one is a truncated download.
    let mut magic = Vec::with_capacity(4);
    (&mut r.inner).take(4).read_to_end(&mut magic).map_err(|e| r.io(e))?;
    r.pos = magic.len() as u64;
    if !b"GGUF".starts_with(&magic) {
        return Err(GgufError::NotGguf { path: r.path.to_owned() });
    }
    if magic.len() < 4 {
        return Err(GgufError::Truncated { path: r.path.to_owned(), expected: 4, actual: r.file_size });
    }
    let version = r.u32()?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { path: r.path.to_owned(), version });
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    // Smallest possible encodings: a key/value is an empty key (8) + type (4) + a u8 (1); a tensor
    // is an empty name (8) + n_dims (4) + type (4) + offset (8).
    if kv_count.checked_mul(13).is_none_or(|n| n > r.file_size) {
        return Err(r.corrupt(format!(
            "header claims {kv_count} metadata entries, more than the file's {} bytes can hold",
            r.file_size
        )));
    }
    if tensor_count.checked_mul(24).is_none_or(|n| n > r.file_size) {
        return Err(r.corrupt(format!(
            "header claims {tensor_count} tensors, more than the file's {} bytes can hold",
            r.file_size
        )));
    }

    let mut meta = Metadata::default();
    for _ in 0..kv_count {
        let key = r.string("metadata key", MAX_KEY_LEN)?;
        let ty = r.u32()?;
        meta.read(r, key, ty)?;
    }

    let alignment = match meta.alignment {
        None => DEFAULT_ALIGNMENT,
        Some(Value::Uint(a)) if a.is_power_of_two() && a <= u32::MAX.into() => a,
        Some(_) => return Err(r.corrupt("general.alignment must be a u32 power of two")),
    };
    let Some(architecture) = meta.architecture else {
        return Err(r.corrupt("general.architecture is missing or not a string"));
    };

    let mut parameter_count: u64 = 0;
    let mut data_len: u64 = 0;
    for index in 0..tensor_count {
        let name = r.string("tensor name", MAX_KEY_LEN)?;
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(r.corrupt(format!("tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")));
        }
        let mut dims = [1u64; MAX_DIMS as usize];
        for d in dims.iter_mut().take(n_dims as usize) {
            *d = r.u64()?;
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64 && d <= i64::MAX as u64))
            .ok_or_else(|| {
                r.corrupt(format!("tensor {name} has impossible dimensions {:?}", &dims[..n_dims as usize]))
            })?;
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        parameter_count = parameter_count.saturating_add(elements);

        // A type this table does not know cannot be sized; llama.cpp decides about it later.
        if let Some((block_bytes, block_len)) = ggml_type_size(ggml_type) {
            if dims[0] % block_len != 0 {
                return Err(r.corrupt(format!(
                    "tensor {name} (#{index}) has a first dimension of {} that is not a multiple of its \
                     block size {block_len}",
                    dims[0]
                )));
            }
            let end = (elements / block_len)
                .checked_mul(block_bytes)
                .and_then(|bytes| offset.checked_add(bytes))
                .ok_or_else(|| r.corrupt(format!("tensor {name} has an impossible offset {offset}")))?;
            data_len = data_len.max(end);
        }
    }

    let header_end = r.pos;
    let data_start = if tensor_count > 0 { header_end.next_multiple_of(alignment) } else { header_end };
    let expected = data_start.saturating_add(data_len);
    // With no tensor this table can size there is nothing to check (not even the padding).
    if data_len > 0 && expected > r.file_size {
        return Err(GgufError::Truncated { path: r.path.to_owned(), expected, actual: r.file_size });
    }

    let (bos_token, eos_token) = match meta.tokens {
        Some(tokens) => read_special_tokens(r, tokens, meta.bos_token_id, meta.eos_token_id)?,
        None => (None, None),
    };
    let per_architecture = |suffix: &str| {
        meta.per_architecture
            .iter()
            .find(|(key, _)| key.strip_suffix(suffix) == Some(architecture.as_str()))
            .and_then(|(_, value)| value.as_u32())
    };
    let context_length = per_architecture(".context_length");
    let embedding_length = per_architecture(".embedding_length");
    let pooling_type = per_architecture(".pooling_type");

    Ok(GgufInfo {
        architecture,
        name: meta.name,
        size_label: meta.size_label,
        context_length,
        parameter_count,
        file_type: meta.file_type,
        chat_template: meta.chat_template,
        bos_token,
        eos_token,
        add_bos_token: meta.add_bos_token,
        file_size: r.file_size,
        embedding_length,
        pooling_type,
    })
}

/// Where the vocabulary array sits, so the few special tokens can be fetched after the metadata
/// has told us their ids (which llama.cpp writes *after* the vocabulary).
struct TokensArray {
    start: u64,
    count: u64,
}

/// The metadata entries we report on. Values of an unexpected type are treated as absent: they are
/// llama.cpp's business, not a reason to hide the model from the list.
#[derive(Default)]
struct Metadata {
    architecture: Option<String>,
    name: Option<String>,
    size_label: Option<String>,
    file_type: Option<u32>,
    alignment: Option<Value>,
    chat_template: Option<String>,
    add_bos_token: Option<bool>,
    bos_token_id: Option<u64>,
    eos_token_id: Option<u64>,
    tokens: Option<TokensArray>,
    /// Every `*.context_length`, `*.embedding_length` and `*.pooling_type`, because
    /// `general.architecture` could in principle come later.
    per_architecture: Vec<(String, Value)>,
}

impl Metadata {
    fn read(&mut self, r: &mut Reader<'_>, key: String, ty: u32) -> Result<(), GgufError> {
        match key.as_str() {
            "general.architecture" => self.architecture = r.value(&key, ty)?.into_string(),
            "general.name" => self.name = r.value(&key, ty)?.into_string(),
            "general.size_label" => self.size_label = r.value(&key, ty)?.into_string(),
            "general.file_type" => self.file_type = r.value(&key, ty)?.as_u32(),
            "general.alignment" => {
                self.alignment = Some(match ty {
                    T_U32 => r.value(&key, ty)?,
                    _ => {
                        r.skip_value(&key, ty, 0)?;
                        Value::Other
                    }
                })
            }
            "tokenizer.chat_template" => self.chat_template = r.value(&key, ty)?.into_string(),
            "tokenizer.ggml.add_bos_token" => {
                self.add_bos_token = match r.value(&key, ty)? {
                    Value::Bool(b) => Some(b),
                    _ => None,
                }
            }
            "tokenizer.ggml.bos_token_id" => self.bos_token_id = r.value(&key, ty)?.as_u64(),
            "tokenizer.ggml.eos_token_id" => self.eos_token_id = r.value(&key, ty)?.as_u64(),
            "tokenizer.ggml.tokens" if ty == T_ARRAY => {
                let (item_ty, count) = r.array_header(&key)?;
                let start = r.pos;
                if item_ty == T_STRING {
                    self.tokens = Some(TokensArray { start, count });
                    (0..count).try_for_each(|_| r.skip_string("token"))?;
                } else {
                    (0..count).try_for_each(|_| r.skip_value(&key, item_ty, 1))?;
                }
            }
            k if [".context_length", ".embedding_length", ".pooling_type"].iter().any(|s| k.ends_with(s)) => {
                let value = r.value(&key, ty)?;
                self.per_architecture.push((key, value));
            }
            _ => r.skip_value(&key, ty, 0)?,
        }
        Ok(())
    }
}

/// Walks the vocabulary again up to the highest wanted id, keeping only the BOS and EOS texts.
fn read_special_tokens(
    r: &mut Reader<'_>,
    tokens: TokensArray,
    bos: Option<u64>,
    eos: Option<u64>,
) -> Result<(Option<String>, Option<String>), GgufError> {
    let bos = bos.filter(|&id| id < tokens.count);
    let eos = eos.filter(|&id| id < tokens.count);
    let Some(last) = bos.max(eos) else { return Ok((None, None)) };
    r.seek_to(tokens.start)?;
    let (mut bos_text, mut eos_text) = (None, None);
    for id in 0..=last {
        if Some(id) == bos || Some(id) == eos {
            let text = r.string("token", MAX_STRING_LEN)?;
            if Some(id) == bos {
                bos_text = Some(text.clone());
            }
            if Some(id) == eos {
                eos_text = Some(text);
            }
        } else {
            r.skip_string("token")?;
        }
    }
    Ok((bos_text, eos_text))
}

/// Bytes per block and elements per block of a ggml tensor type, from ggml's `type_traits` table
/// (ggml/src/ggml.c and the block structs in ggml-common.h). `None` for types not listed here.
fn ggml_type_size(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (4, 1),      // F32
        1 => (2, 1),      // F16
        2 => (18, 32),    // Q4_0
        3 => (20, 32),    // Q4_1
        6 => (22, 32),    // Q5_0
        7 => (24, 32),    // Q5_1
        8 => (34, 32),    // Q8_0
        9 => (36, 32),    // Q8_1
        10 => (84, 256),  // Q2_K
        11 => (110, 256), // Q3_K
        12 => (144, 256), // Q4_K
        13 => (176, 256), // Q5_K
        14 => (210, 256), // Q6_K
        15 => (292, 256), // Q8_K
        16 => (66, 256),  // IQ2_XXS
        17 => (74, 256),  // IQ2_XS
        18 => (98, 256),  // IQ3_XXS
        19 => (50, 256),  // IQ1_S
        20 => (18, 32),   // IQ4_NL
        21 => (110, 256), // IQ3_S
        22 => (82, 256),  // IQ2_S
        23 => (136, 256), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (2, 1),     // I16
        26 => (4, 1),     // I32
        27 => (8, 1),     // I64
        28 => (8, 1),     // F64
        29 => (56, 256),  // IQ1_M
        30 => (2, 1),     // BF16
        34 => (54, 256),  // TQ1_0
        35 => (66, 256),  // TQ2_0
        39 => (17, 32),   // MXFP4
        _ => return None,
    })
}

/// llama.cpp's `llama_ftype` values (include/llama.h) by their enum names.
fn ftype_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        _ => return None,
    })
}

/// Ollama's `format.HumanNumber`: billions with one decimal, millions with two, thousands with
/// none, and no decimals at all when the scaled value is a whole number.
fn human_number(n: u64) -> String {
    const THOUSAND: f64 = 1e3;
    const MILLION: f64 = 1e6;
    const BILLION: f64 = 1e9;
    let scaled = |unit: f64, decimals: usize, suffix: &str| {
        let v = n as f64 / unit;
        let decimals = if v == v.floor() { 0 } else { decimals };
        format!("{v:.decimals$}{suffix}")
    };
    match n as f64 {
        x if x >= BILLION => scaled(BILLION, 1, "B"),
        x if x >= MILLION => scaled(MILLION, 2, "M"),
        x if x >= THOUSAND => format!("{:.0}K", n as f64 / THOUSAND),
        _ => n.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A minimal GGUF writer for building test files, shared with the store tests.

    /// Builds a GGUF file in memory. Tensor data is zero bytes of the right length.
    pub struct GgufBuilder {
        pub version: u32,
        kvs: Vec<u8>,
        kv_count: u64,
        tensors: Vec<(String, Vec<u64>, u32)>,
    }

    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    impl GgufBuilder {
        pub fn new(arch: &str) -> Self {
            let mut b = GgufBuilder { version: 3, kvs: Vec::new(), kv_count: 0, tensors: Vec::new() };
            b.kv_str("general.architecture", arch);
            b
        }

        /// Appends a raw key/value: the value bytes must already be encoded for `ty`.
        pub fn kv_raw(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
            string(&mut self.kvs, key);
            self.kvs.extend_from_slice(&ty.to_le_bytes());
            self.kvs.extend_from_slice(value);
            self.kv_count += 1;
            self
        }

        pub fn kv_str(&mut self, key: &str, value: &str) -> &mut Self {
            let mut v = Vec::new();
            string(&mut v, value);
            self.kv_raw(key, 8, &v)
        }

        pub fn kv_u32(&mut self, key: &str, value: u32) -> &mut Self {
            self.kv_raw(key, 4, &value.to_le_bytes())
        }

        pub fn kv_bool(&mut self, key: &str, value: bool) -> &mut Self {
            self.kv_raw(key, 7, &[value as u8])
        }

        pub fn kv_str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
            let mut v = Vec::new();
            v.extend_from_slice(&8u32.to_le_bytes());
            v.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                string(&mut v, item);
            }
            self.kv_raw(key, 9, &v)
        }

        pub fn kv_f32_array(&mut self, key: &str, items: &[f32]) -> &mut Self {
            let mut v = Vec::new();
            v.extend_from_slice(&6u32.to_le_bytes());
            v.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                v.extend_from_slice(&item.to_le_bytes());
            }
            self.kv_raw(key, 9, &v)
        }

        pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32) -> &mut Self {
            self.tensors.push((name.to_owned(), dims.to_vec(), ggml_type));
            self
        }

        /// A small model: a vocabulary with BOS/EOS, a template and two tensors.
        pub fn sample(arch: &str) -> Self {
            let mut b = GgufBuilder::new(arch);
            b.kv_str("general.name", "Sample")
                .kv_u32(&format!("{arch}.context_length"), 4096)
                .kv_u32("general.file_type", 15)
                .kv_str_array("tokenizer.ggml.tokens", &["<unk>", "<s>", "</s>", "hello"])
                .kv_f32_array("tokenizer.ggml.scores", &[0.0, 0.0, 0.0, -1.0])
                .kv_u32("tokenizer.ggml.bos_token_id", 1)
                .kv_u32("tokenizer.ggml.eos_token_id", 2)
                .kv_bool("tokenizer.ggml.add_bos_token", true)
                .kv_str("tokenizer.chat_template", "{{ messages }}")
                .tensor("token_embd.weight", &[256, 4], 12) // Q4_K: 4 blocks of 144 bytes
                .tensor("output_norm.weight", &[256], 0); // F32: 1024 bytes
            b
        }

        /// The whole file: header, padding, and zeroed tensor data.
        pub fn build(&self) -> Vec<u8> {
            let (mut out, data_len) = self.header();
            if !self.tensors.is_empty() {
                out.resize((out.len() as u64).next_multiple_of(ALIGN) as usize, 0);
            }
            out.resize(out.len() + data_len as usize, 0);
            out
        }

        /// The header alone, without padding or tensor data.
        pub fn header_only(&self) -> Vec<u8> {
            self.header().0
        }

        /// The header, and the length of the data section it describes. Tensors are laid out as
        /// llama.cpp does: each padded to the alignment except the last.
        fn header(&self) -> (Vec<u8>, u64) {
            let mut out = Vec::new();
            out.extend_from_slice(b"GGUF");
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&self.kv_count.to_le_bytes());
            out.extend_from_slice(&self.kvs);
            let (mut offset, mut end) = (0u64, 0u64);
            for (name, dims, ty) in &self.tensors {
                string(&mut out, name);
                out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                end = offset + tensor_bytes(dims, *ty);
                offset = end.next_multiple_of(ALIGN);
            }
            (out, end)
        }
    }

    const ALIGN: u64 = 32;

    /// Zero for types or shapes the reader would reject anyway: those tests only need the header.
    fn tensor_bytes(dims: &[u64], ty: u32) -> u64 {
        let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).unwrap_or(0);
        super::ggml_type_size(ty).map_or(0, |(bytes, block)| elements / block * bytes)
    }
}
#[cfg(test)]
mod tests {
    use super::testutil::{GgufBuilder, string};
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn info_of(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
        let dir = tempfile::tempdir().unwrap();
        read_info(&write(&dir, "m.gguf", bytes))
    }

    #[test]
    fn reads_metadata() {
        let bytes = GgufBuilder::sample("llama").build();
        let info = info_of(&bytes).unwrap();
        assert_eq!(info.architecture, "llama");
        assert_eq!(info.name.as_deref(), Some("Sample"));
        assert_eq!(info.size_label, None);
        assert_eq!(info.context_length, Some(4096));
        assert_eq!(info.file_type, Some(15));
        assert_eq!(info.quantization(), "Q4_K_M");
        assert_eq!(info.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(info.bos_token.as_deref(), Some("<s>"));
        assert_eq!(info.eos_token.as_deref(), Some("</s>"));
        assert_eq!(info.add_bos_token, Some(true));
        assert_eq!(info.parameter_count, 256 * 4 + 256);
        assert_eq!(info.file_size, bytes.len() as u64);
    }

    #[test]
    fn context_length_of_another_architecture_is_ignored() {
        let mut b = GgufBuilder::new("qwen2");
        b.kv_u32("llama.context_length", 2048);
        let info = info_of(&b.build()).unwrap();
        assert_eq!(info.context_length, None);
        assert_eq!(info.bos_token, None);
        assert_eq!(info.quantization(), "");
    }

    #[test]
    fn pooling_marks_an_embedding_model() {
        let mut b = GgufBuilder::new("bert");
        b.kv_u32("bert.context_length", 512).kv_u32("bert.embedding_length", 384).kv_u32("bert.pooling_type", 1);
        let info = info_of(&b.build()).unwrap();
        assert_eq!((info.context_length, info.embedding_length, info.pooling_type), (Some(512), Some(384), Some(1)));
        assert!(info.is_embedding_model());
        // Another architecture's keys do not count; a reranker (4) and no pooling (0) do not embed.
        for (key, value, embeds) in
            [("llama.pooling_type", 1, false), ("bert.pooling_type", 4, false), ("bert.pooling_type", 0, false)]
        {
            let mut b = GgufBuilder::new("bert");
            b.kv_u32(key, value);
            let info = info_of(&b.build()).unwrap();
            assert_eq!(info.is_embedding_model(), embeds, "{key} = {value}");
        }
        let mut b = GgufBuilder::new("qwen2");
        b.kv_u32("qwen2.embedding_length", 896);
        let info = info_of(&b.build()).unwrap();
        assert_eq!((info.embedding_length, info.is_embedding_model()), (Some(896), false));
    }

    #[test]
    fn special_token_ids_before_the_vocabulary_and_equal_ids() {
        let mut b = GgufBuilder::new("llama");
        b.kv_u32("tokenizer.ggml.bos_token_id", 0)
            .kv_u32("tokenizer.ggml.eos_token_id", 0)
            .kv_str_array("tokenizer.ggml.tokens", &["<|endoftext|>", "a"]);
        let info = info_of(&b.build()).unwrap();
        assert_eq!(info.bos_token.as_deref(), Some("<|endoftext|>"));
        assert_eq!(info.eos_token.as_deref(), Some("<|endoftext|>"));
    }

    #[test]
    fn token_id_outside_the_vocabulary_is_absent() {
        let mut b = GgufBuilder::new("llama");
        b.kv_str_array("tokenizer.ggml.tokens", &["a"]).kv_u32("tokenizer.ggml.eos_token_id", 7);
        assert_eq!(info_of(&b.build()).unwrap().eos_token, None);
    }

    #[test]
    fn quantization_names() {
        let info = |file_type| GgufInfo {
            architecture: "x".into(),
            name: None,
            size_label: None,
            context_length: None,
            parameter_count: 0,
            file_type,
            chat_template: None,
            bos_token: None,
            eos_token: None,
            add_bos_token: None,
            file_size: 0,
            embedding_length: None,
            pooling_type: None,
        };
        let cases = [
            (0, "F32"),
            (1, "F16"),
            (7, "Q8_0"),
            (15, "Q4_K_M"),
            (18, "Q6_K"),
            (27, "IQ3_M"),
            (32, "BF16"),
            (38, "MXFP4"),
        ];
        for (ftype, name) in cases {
            assert_eq!(info(Some(ftype)).quantization(), name);
        }
        assert_eq!(info(Some(4)).quantization(), "");
        assert_eq!(info(Some(1000)).quantization(), "");
        assert_eq!(info(None).quantization(), "");
    }

    #[test]
    fn parameter_size_like_ollama() {
        let cases = [
            (494_032_768, "494.03M"),
            (268_098_176, "268.10M"),
            (3_212_749_888, "3.2B"),
            (7_615_616_512, "7.6B"),
            (8_000_000_000, "8B"),
            (3_000_000_001, "3.0B"),
            (12_000_000, "12M"),
            (999_999, "1000K"),
            (1_500, "2K"),
            (999, "999"),
            (0, "0"),
        ];
        for (n, want) in cases {
            assert_eq!(human_number(n), want, "{n}");
        }
    }

    #[test]
    fn bad_magic_is_not_gguf() {
        let mut bytes = GgufBuilder::sample("llama").build();
        bytes[..4].copy_from_slice(b"GGML");
        assert!(matches!(info_of(&bytes), Err(GgufError::NotGguf { .. })));
        assert!(matches!(info_of(b"<!"), Err(GgufError::NotGguf { .. })));
        let err = info_of(b"version https://git-lfs.github.com/spec/v1\n").unwrap_err();
        assert!(matches!(err, GgufError::NotGguf { .. }));
        assert!(err.to_string().contains("m.gguf"), "{err}");
    }

    #[test]
    fn empty_file_is_truncated() {
        assert!(matches!(info_of(b""), Err(GgufError::Truncated { expected: 4, actual: 0, .. })));
        assert!(matches!(info_of(b"GGUF"), Err(GgufError::Truncated { expected: 8, actual: 4, .. })));
    }

    #[test]
    fn unsupported_versions() {
        for version in [1, 4, 0x0300_0000] {
            let mut b = GgufBuilder::sample("llama");
            b.version = version;
            match info_of(&b.build()) {
                Err(GgufError::UnsupportedVersion { version: v, .. }) => assert_eq!(v, version),
                other => panic!("{version}: {other:?}"),
            }
        }
        let mut b = GgufBuilder::sample("llama");
        b.version = 2;
        assert!(info_of(&b.build()).is_ok());
    }

    #[test]
    fn truncated_tensor_data() {
        let bytes = GgufBuilder::sample("llama").build();
        let cut = &bytes[..bytes.len() - 100];
        match info_of(cut) {
            Err(GgufError::Truncated { expected, actual, .. }) => {
                assert_eq!(expected, bytes.len() as u64);
                assert_eq!(actual, cut.len() as u64);
            }
            other => panic!("{other:?}"),
        }
        let err = info_of(cut).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("m.gguf"), "{err}");
    }

    #[test]
    fn truncated_inside_metadata() {
        let bytes = GgufBuilder::sample("llama").build();
        // 140 bytes end inside the third entry, llama.context_length, whose u32 needs bytes 139..143.
        assert!(matches!(info_of(&bytes[..140]), Err(GgufError::Truncated { expected: 143, actual: 140, .. })));
    }

    #[test]
    fn every_prefix_is_rejected() {
        let bytes = GgufBuilder::sample("llama").build();
        let dir = tempfile::tempdir().unwrap();
        for len in 0..bytes.len() {
            let result = read_info(&write(&dir, "m.gguf", &bytes[..len]));
            assert!(
                matches!(result, Err(GgufError::Truncated { .. } | GgufError::Corrupt { .. })),
                "{len}: {result:?}"
            );
        }
    }

    #[test]
    fn damaged_headers_never_panic() {
        let bytes = GgufBuilder::sample("llama").build();
        let dir = tempfile::tempdir().unwrap();
        let header_len = bytes.len() - 1600;
        for at in 4..header_len {
            for byte in [0x00, 0x7F, 0xFF] {
                let mut damaged = bytes.clone();
                damaged[at] = byte;
                let _ = read_info(&write(&dir, "m.gguf", &damaged));
            }
        }
    }

    #[test]
    fn string_longer_than_the_file_is_corrupt() {
        let mut b = GgufBuilder::new("llama");
        let mut value = Vec::new();
        value.extend_from_slice(&(1u64 << 40).to_le_bytes());
        value.extend_from_slice(b"short");
        b.kv_raw("general.name", 8, &value);
        match info_of(&b.build()) {
            Err(GgufError::Corrupt { detail, .. }) => assert!(detail.contains("general.name"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn huge_array_count_is_corrupt() {
        let mut b = GgufBuilder::new("llama");
        let mut value = Vec::new();
        value.extend_from_slice(&6u32.to_le_bytes());
        value.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        b.kv_raw("tokenizer.ggml.scores", 9, &value);
        assert!(matches!(info_of(&b.build()), Err(GgufError::Corrupt { .. })));

        let mut b = GgufBuilder::new("llama");
        let mut value = Vec::new();
        value.extend_from_slice(&8u32.to_le_bytes());
        value.extend_from_slice(&(1u64 << 33).to_le_bytes());
        b.kv_raw("tokenizer.ggml.tokens", 9, &value);
        assert!(matches!(info_of(&b.build()), Err(GgufError::Corrupt { .. })));
    }

    #[test]
    fn huge_counts_in_the_header_are_corrupt() {
        let mut bytes = GgufBuilder::sample("llama").build();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(info_of(&bytes), Err(GgufError::Corrupt { .. })));
        let mut bytes = GgufBuilder::sample("llama").build();
        bytes[16..24].copy_from_slice(&(1u64 << 50).to_le_bytes());
        assert!(matches!(info_of(&bytes), Err(GgufError::Corrupt { .. })));
    }

    #[test]
    fn bad_tensor_descriptions_are_corrupt() {
        let mut b = GgufBuilder::new("llama");
        b.tensor("t", &[1, 1, 1, 1, 1], 0);
        assert!(matches!(info_of(&b.header_only()), Err(GgufError::Corrupt { .. })));
        let mut b = GgufBuilder::new("llama");
        b.tensor("t", &[u64::MAX, 4], 0);
        assert!(matches!(info_of(&b.header_only()), Err(GgufError::Corrupt { .. })));
        let mut b = GgufBuilder::new("llama");
        b.tensor("t", &[100], 12); // Q4_K needs multiples of 256
        assert!(matches!(info_of(&b.header_only()), Err(GgufError::Corrupt { .. })));
    }

    #[test]
    fn unknown_tensor_type_skips_the_size_check() {
        let mut b = GgufBuilder::new("llama");
        b.tensor("t", &[1 << 20], 999);
        let info = info_of(&b.header_only()).unwrap();
        assert_eq!(info.parameter_count, 1 << 20);
    }

    #[test]
    fn bad_alignment_and_missing_architecture_are_corrupt() {
        let mut b = GgufBuilder::sample("llama");
        b.kv_u32("general.alignment", 48);
        assert!(matches!(info_of(&b.build()), Err(GgufError::Corrupt { .. })));

        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"GGUF");
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        string(&mut bytes, "general.name");
        bytes.extend_from_slice(&8u32.to_le_bytes());
        string(&mut bytes, "nameless");
        assert!(matches!(info_of(&bytes), Err(GgufError::Corrupt { .. })));
    }

    #[test]
    fn larger_alignment_is_honoured() {
        let mut b = GgufBuilder::new("llama");
        b.kv_u32("general.alignment", 4096).tensor("t", &[8], 0);
        let mut bytes = b.header_only();
        // Header is well under 4096 bytes, so the data must start at 4096 and end 32 bytes later.
        assert!(matches!(info_of(&bytes), Err(GgufError::Truncated { expected: 4128, .. })));
        bytes.resize(4128, 0);
        assert!(info_of(&bytes).is_ok());
    }

    #[test]
    fn missing_file_is_io() {
        let err = read_info(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(err, GgufError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/model.gguf"));
    }

    /// A model fetched into the cache by the test script; `None` (with a note) when it is not there.
    /// Several names because the file has been saved under more than one.
    fn real_model(files: &[&str]) -> Option<PathBuf> {
        let dir = PathBuf::from(std::env::var_os("HOME")?).join(".cache/copilot/models");
        let found = files.iter().map(|f| dir.join(f)).find(|p| p.exists());
        if found.is_none() {
            eprintln!("skipping: none of {files:?} is in {}", dir.display());
        }
        found
    }

    #[test]
    fn real_gemma3_270m() {
        let Some(path) = real_model(&["gemma-3-270m-q4_k_m.gguf"]) else { return };
        let info = read_info(&path).unwrap();
        eprintln!("{info:#?}");
        assert_eq!(info.architecture, "gemma3");
        assert_eq!(info.context_length, Some(32768));
        assert_eq!(info.quantization(), "Q4_K_M");
        assert_eq!(info.chat_template, None);
        assert_eq!(info.bos_token.as_deref(), Some("<bos>"));
        assert_eq!(info.add_bos_token, Some(true));
    }

    #[test]
    fn real_qwen25_coder_05b() {
        let Some(path) =
            real_model(&["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-0.5b-instruct-q4.gguf"])
        else {
            return;
        };
        let info = read_info(&path).unwrap();
        eprintln!("{:#?}", GgufInfo { chat_template: None, ..info.clone() });
        assert_eq!(info.architecture, "qwen2");
        assert_eq!(info.context_length, Some(32768));
        assert!(info.chat_template.as_deref().unwrap_or_default().contains("<|im_start|>"));
        assert_eq!(info.eos_token.as_deref(), Some("<|im_end|>"));
        assert_eq!(info.add_bos_token, Some(false));
    }
}
