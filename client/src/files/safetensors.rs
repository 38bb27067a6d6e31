//! `.safetensors` files in and out of a daemon.
//!
//! Import stores each tensor as the shard `{prefix}{name}` with its element
//! type and shape, straight from a mapping of the file, a few puts in
//! flight; then the file's header, verbatim, as the shard
//! `{prefix}__safetensors__.header` (last, so that it marks a complete
//! import). Export writes the tensors under a prefix back into one file:
//! with the stored header when it still describes the shards (same names,
//! types, shapes and lengths), which makes the file byte for byte the one
//! imported; otherwise with a new header in the `safetensors` crate's own
//! layout (tensors by decreasing alignment, then name).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use shardd_protocol::{DType, Key, ShardMeta};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::pieces::{self, Output, Part};
use super::{FilesError, map_file};
use crate::progress::Progress;
use crate::{Client, PutOptions};

/// Key (after the prefix) of the shard that keeps an imported file's header.
pub const HEADER_KEY: &str = "__safetensors__.header";
/// Puts of an import in flight at once.
const PUTS_IN_FLIGHT: usize = 4;
/// Bytes of the length before a file's header.
const LEN_BYTES: usize = 8;

/// What an import stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// Tensors stored.
    pub tensors: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of the file.
    pub bytes: u64,
    /// Whether the header imported with them was written (the file is the
    /// one imported, with the shards' current bytes).
    pub original_header: bool,
}

/// shardd's element type for a safetensors one (`None`: stored raw).
fn to_shardd(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::U16 => DType::U16,
        Dtype::I16 => DType::I16,
        Dtype::U32 => DType::U32,
        Dtype::I32 => DType::I32,
        Dtype::U64 => DType::U64,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F8_E4M3 => DType::F8E4M3,
        Dtype::F8_E5M2 => DType::F8E5M2,
        _ => return None,
    })
}

/// The safetensors element type for a shardd one (raw bytes: `U8`).
fn to_safetensors(dtype: DType) -> Dtype {
    match dtype {
        DType::Raw | DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
        DType::I8 => Dtype::I8,
        DType::U16 => Dtype::U16,
        DType::I16 => Dtype::I16,
        DType::U32 => Dtype::U32,
        DType::I32 => Dtype::I32,
        DType::U64 => Dtype::U64,
        DType::I64 => Dtype::I64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F8E4M3 => Dtype::F8_E4M3,
        DType::F8E5M2 => Dtype::F8_E5M2,
    }
}

/// Stores every tensor of the `.safetensors` file at `path` as the shard
/// `{prefix}{name}` of `namespace`, then the file's header; `progress`
/// hears of the tensors' bytes as they are stored. The file must not be
/// truncated while it is read (it is mapped).
pub async fn import_safetensors(
    client: &Client,
    path: &Path,
    namespace: &str,
    prefix: &str,
    progress: Option<Arc<dyn Progress>>,
) -> Result<Imported, FilesError> {
    let bad = |reason: String| FilesError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let (file, data_start, tensors) = read_file(path, prefix)?;
    let total: u64 = tensors.iter().map(|t| t.3.len() as u64).sum();
    if let Some(progress) = &progress {
        progress.start(total);
    }
    let slots = Arc::new(Semaphore::new(PUTS_IN_FLIGHT));
    let mut puts = JoinSet::new();
    let count = tensors.len();
    for (key, dtype, shape, bytes) in tensors {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| bad("import stopped".into()))?;
        let (client, namespace, progress) = (client.clone(), namespace.to_string(), progress.clone());
        puts.spawn(async move {
            let len = bytes.len() as u64;
            let options = PutOptions {
                dtype,
                shape,
                ..PutOptions::default()
            };
            let stored = client.put(&namespace, &key, bytes, options).await;
            drop(permit);
            if let (Ok(_), Some(progress)) = (&stored, &progress) {
                progress.advance(len);
            }
            stored
        });
        // Stop at the first failure rather than store the rest.
        while let Some(done) = puts.try_join_next() {
            done.map_err(|e| bad(format!("a put stopped: {e}")))??;
        }
    }
    while let Some(done) = puts.join_next().await {
        done.map_err(|e| bad(format!("a put stopped: {e}")))??;
    }
    let header = file.slice(..data_start);
    let key = format!("{prefix}{HEADER_KEY}");
    client.put(namespace, &key, header, PutOptions::default()).await?;
    Ok(Imported {
        tensors: count,
        bytes: total,
    })
}

/// A tensor of a file to import: its key, type, shape and bytes.
type ToImport = (String, DType, Vec<u64>, bytes::Bytes);

/// The file at `path`, mapped: all of it, where its data starts, and its
/// tensors (keys with `prefix`) in file order.
fn read_file(path: &Path, prefix: &str) -> Result<(bytes::Bytes, usize, Vec<ToImport>), FilesError> {
    let bad = |reason: String| FilesError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let file = map_file(path)?;
    let (n, metadata) =
        safetensors::SafeTensors::read_metadata(&file).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let data_start = LEN_BYTES + n;
    let mut tensors = Vec::new();
    for name in metadata.offset_keys() {
        let Some(info) = metadata.info(&name) else { continue };
        let key = format!("{prefix}{name}");
        Key::new(key.as_str()).map_err(|e| bad(format!("tensor {name:?} cannot be stored: {e}")))?;
        let (dtype, shape) = match to_shardd(info.dtype) {
            Some(dtype) => (dtype, info.shape.iter().map(|&d| d as u64).collect()),
            None => (DType::Raw, Vec::new()),
        };
        let (start, end) = info.data_offsets;
        tensors.push((key, dtype, shape, file.slice(data_start + start..data_start + end)));
    }
    Ok((file, data_start, tensors))
}

/// Stores every tensor of the `.safetensors` file at `path` partitioned
/// across `cluster`'s nodes (see [`crate::Cluster::put_partitioned`]),
/// named `{prefix}{name}`, ready for layer gathers; one tensor at a time,
/// its partitions in parallel. The file must not be truncated while it is
/// read (it is mapped).
pub async fn import_safetensors_partitioned(
    cluster: &crate::Cluster,
    path: &Path,
    namespace: &str,
    prefix: &str,
    progress: Option<Arc<dyn Progress>>,
) -> Result<Imported, FilesError> {
    let (_file, _, tensors) = read_file(path, prefix)?;
    let total: u64 = tensors.iter().map(|t| t.3.len() as u64).sum();
    if let Some(progress) = &progress {
        progress.start(total);
    }
    let count = tensors.len();
    for (key, dtype, shape, bytes) in tensors {
        let len = bytes.len() as u64;
        cluster.put_partitioned(namespace, &key, bytes, dtype, shape).await?;
        if let Some(progress) = &progress {
            progress.advance(len);
        }
    }
    Ok(Imported {
        tensors: count,
        bytes: total,
    })
}

/// A tensor to export: its name in the file and its shard.
struct Tensor {
    name: String,
    meta: ShardMeta,
}

/// Writes the shards of `namespace` under `prefix` (or, with `keys`, those
/// keys, named without the prefix) into the `.safetensors` file at `path`,
/// in pieces; the file appears only once complete and checked.
pub async fn export_safetensors(
    client: &Client,
    namespace: &str,
    prefix: &str,
    keys: Option<&[String]>,
    path: &Path,
    progress: Option<Arc<dyn Progress>>,
) -> Result<Exported, FilesError> {
    let bad = |reason: String| FilesError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let header_key = format!("{prefix}{HEADER_KEY}");
    let shards: Vec<ShardMeta> = match keys {
        Some(keys) => {
            let mut metas = Vec::with_capacity(keys.len());
            for key in keys {
                metas.push(client.stat(namespace, key).await?.meta);
            }
            metas
        }
        None => client.list(namespace, prefix).await?,
    };
    let tensors: Vec<Tensor> = shards
        .into_iter()
        .filter(|m| m.key.as_str() != header_key)
        .map(|meta| Tensor {
            name: meta
                .key
                .as_str()
                .strip_prefix(prefix)
                .unwrap_or(meta.key.as_str())
                .to_string(),
            meta,
        })
        .collect();
    if tensors.is_empty() {
        return Err(bad(format!(
            "no shards of {namespace} start with {prefix:?}: nothing to export"
        )));
    }
    let stored_header = match keys {
        Some(_) => None,
        None => match client.fetch(namespace, &header_key).await {
            Ok(shard) => Some(shard.data),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        },
    };
    let (header, offsets, original) = match stored_header.and_then(|h| header_still_fits(&h, &tensors)) {
        Some((header, offsets)) => (header, offsets, true),
        None => {
            let kept = stored_header_metadata(client, namespace, &header_key, keys).await;
            let (header, offsets) = new_header(&tensors, kept).map_err(bad)?;
            (header, offsets, false)
        }
    };
    let data_start = header.len() as u64;
    let total = data_start + tensors.iter().map(|t| t.meta.len).sum::<u64>();
    if let Some(progress) = &progress {
        progress.start(total - data_start);
    }
    let parts: Vec<Part> = tensors
        .iter()
        .map(|t| Part {
            key: t.meta.key.to_string(),
            version: t.meta.version,
            crc32c: t.meta.crc32c,
            len: t.meta.len,
            at: data_start + offsets[&t.name],
        })
        .collect();
    let mut sink = Output::File(path.to_path_buf()).open(total)?;
    sink.write_at(0, &header)?;
    let sink = pieces::fetch(client, namespace, &parts, sink, progress).await?;
    sink.finish()?;
    Ok(Exported {
        tensors: tensors.len(),
        bytes: total,
        original_header: original,
    })
}

/// The stored header and each tensor's offset in the data, if the header
/// describes exactly these shards.
fn header_still_fits(header: &[u8], tensors: &[Tensor]) -> Option<(Vec<u8>, HashMap<String, u64>)> {
    let metadata = parse_header(header)?;
    let infos = metadata.tensors();
    if infos.len() != tensors.len() {
        return None;
    }
    let mut offsets = HashMap::with_capacity(tensors.len());
    for tensor in tensors {
        let info = infos.get(&tensor.name)?;
        let (start, end) = info.data_offsets;
        let same_type = match to_shardd(info.dtype) {
            Some(dtype) => {
                dtype == tensor.meta.dtype
                    && info
                        .shape
                        .iter()
                        .map(|&d| d as u64)
                        .eq(tensor.meta.shape.iter().copied())
            }
            None => tensor.meta.dtype == DType::Raw,
        };
        if !same_type || (end - start) as u64 != tensor.meta.len {
            return None;
        }
        offsets.insert(tensor.name.clone(), start as u64);
    }
    Some((header.to_vec(), offsets))
}

/// A header (its length and JSON) parsed.
fn parse_header(header: &[u8]) -> Option<Metadata> {
    let len = u64::from_le_bytes(header.get(..LEN_BYTES)?.try_into().ok()?) as usize;
    let json = header.get(LEN_BYTES..LEN_BYTES.checked_add(len)?)?;
    serde_json::from_slice(json).ok()
}

/// The `__metadata__` of the stored header (kept in a new header).
async fn stored_header_metadata(
    client: &Client,
    namespace: &str,
    header_key: &str,
    keys: Option<&[String]>,
) -> Option<HashMap<String, String>> {
    if keys.is_some() {
        return None;
    }
    let shard = client.fetch(namespace, header_key).await.ok()?;
    parse_header(&shard.data)?.metadata().clone()
}

/// A header for `tensors` in the layout the `safetensors` crate writes:
/// by decreasing alignment, then by name; JSON padded with spaces to a
/// multiple of 8 bytes.
fn new_header(
    tensors: &[Tensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<(Vec<u8>, HashMap<String, u64>), String> {
    let mut ordered: Vec<(&Tensor, Dtype)> = tensors.iter().map(|t| (t, to_safetensors(t.meta.dtype))).collect();
    ordered.sort_by(|(a, ad), (b, bd)| bd.cmp(ad).then(a.name.cmp(&b.name)));
    let mut infos = Vec::with_capacity(ordered.len());
    let mut offsets = HashMap::with_capacity(ordered.len());
    let mut at = 0usize;
    for (tensor, dtype) in ordered {
        let len = tensor.meta.len as usize;
        let shape = match tensor.meta.dtype {
            DType::Raw => vec![len],
            _ if tensor.meta.shape.is_empty() && tensor.meta.dtype.size().is_some_and(|s| s == tensor.meta.len) => {
                Vec::new()
            }
            _ if tensor.meta.shape.is_empty() => {
                vec![len / tensor.meta.dtype.size().unwrap_or(1).max(1) as usize]
            }
            _ => tensor.meta.shape.iter().map(|&d| d as usize).collect(),
        };
        offsets.insert(tensor.name.clone(), at as u64);
        infos.push((
            tensor.name.clone(),
            TensorInfo {
                dtype,
                shape,
                data_offsets: (at, at + len),
            },
        ));
        at += len;
    }
    let metadata = Metadata::new(metadata, infos).map_err(|e| format!("the shards make no valid header: {e}"))?;
    let mut json = serde_json::to_vec(&metadata).map_err(|e| e.to_string())?;
    json.resize(json.len().next_multiple_of(LEN_BYTES), b' ');
    let mut header = (json.len() as u64).to_le_bytes().to_vec();
    header.extend_from_slice(&json);
    Ok((header, offsets))
}
