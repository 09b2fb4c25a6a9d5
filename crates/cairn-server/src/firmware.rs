//! The firmware repository and the package resource devices download from.
//!
//! An image is stored once (its bytes and a small metadata record, in the store's firmware
//! table) and served to every device by `GET /fw/{id}` on the device sockets, cut into the
//! blocks each device asks for (RFC 7959 Block2) from one shared copy in memory: ten thousand
//! devices downloading the same image cost one image of memory, not ten thousand.
//! Each response carries the image's ETag (the first 8 bytes of its SHA-256), so a device that
//! resumes a download notices when the package behind the URI changed (Core §E.6, /5/0/1).

use std::sync::{Arc, Mutex};

use cairn_coap::{BlockValue, Code, Message, OptionNumber};
use cairn_store::{BlobKind, BlobStore, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest image the repository accepts.
pub const MAX_IMAGE_BYTES: usize = 64 << 20;

/// How many images are kept in memory for serving.
const CACHED_IMAGES: usize = 4;

/// A firmware image in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareImage {
    /// Random id; the package URI is `/fw/{id}`.
    pub id: String,
    /// The package name (/5/0/6).
    pub name: String,
    /// The package version (/5/0/7).
    pub version: String,
    /// Size in bytes.
    pub size: usize,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// When it was added (Unix milliseconds).
    pub created_at_ms: u64,
}

impl FirmwareImage {
    /// The entity tag of the image's package resource.
    pub fn etag(&self) -> [u8; 8] {
        let mut etag = [0; 8];
        for (i, byte) in etag.iter_mut().enumerate() {
            *byte = u8::from_str_radix(self.sha256.get(2 * i..2 * i + 2).unwrap_or("00"), 16)
                .unwrap_or(0);
        }
        etag
    }
}

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("the image is empty")]
    Empty,
    #[error("the image is {0} bytes; the limit is {MAX_IMAGE_BYTES}")]
    TooLarge(usize),
    #[error("no firmware image {0:?}")]
    Unknown(String),
    #[error("a stored image record does not decode: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn meta_key(id: &str) -> String {
    format!("meta/{id}")
}

fn data_key(id: &str) -> String {
    format!("data/{id}")
}

/// An image kept in memory for serving: its id, metadata and bytes.
type CachedImage = (String, FirmwareImage, Arc<[u8]>);

/// The repository: images in the store, the most recently served ones in memory.
pub struct Repository {
    store: Arc<dyn BlobStore>,
    cache: Mutex<Vec<CachedImage>>,
}

impl Repository {
    pub fn new(store: Arc<dyn BlobStore>) -> Repository {
        Repository {
            store,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// Adds an image; durable when this returns.
    pub async fn add(
        &self,
        name: &str,
        version: &str,
        bytes: Vec<u8>,
        now_ms: u64,
    ) -> Result<FirmwareImage, FirmwareError> {
        if bytes.is_empty() {
            return Err(FirmwareError::Empty);
        }
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(FirmwareError::TooLarge(bytes.len()));
        }
        let digest = Sha256::digest(&bytes);
        let image = FirmwareImage {
            id: cairn_store::random_id()?,
            name: name.to_owned(),
            version: version.to_owned(),
            size: bytes.len(),
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
            created_at_ms: now_ms,
        };
        // The bytes first: a metadata record never points at missing bytes.
        self.store
            .put_blob(BlobKind::FirmwareImage, &data_key(&image.id), bytes)
            .await?;
        let record =
            serde_json::to_vec(&image).map_err(|e| FirmwareError::Corrupt(e.to_string()))?;
        self.store
            .put_blob(BlobKind::FirmwareImage, &meta_key(&image.id), record)
            .await?;
        Ok(image)
    }

    /// The image's metadata.
    pub async fn get(&self, id: &str) -> Result<Option<FirmwareImage>, FirmwareError> {
        match self
            .store
            .get_blob(BlobKind::FirmwareImage, &meta_key(id))
            .await?
        {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| FirmwareError::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }

    /// Every image, oldest first.
    pub async fn list(&self) -> Result<Vec<FirmwareImage>, FirmwareError> {
        let mut images = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_blob_keys(BlobKind::FirmwareImage, after.as_deref(), 500)
                .await?;
            for key in &page.items {
                if let Some(id) = key.strip_prefix("meta/") {
                    if let Some(image) = self.get(id).await? {
                        images.push(image);
                    }
                }
            }
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
        images.sort_by_key(|i| i.created_at_ms);
        Ok(images)
    }

    /// Removes an image; whether it existed.
    pub async fn remove(&self, id: &str) -> Result<bool, FirmwareError> {
        let existed = self
            .store
            .remove_blob(BlobKind::FirmwareImage, &meta_key(id))
            .await?;
        self.store
            .remove_blob(BlobKind::FirmwareImage, &data_key(id))
            .await?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(cached, _, _)| cached != id);
        Ok(existed)
    }

    /// The image and its bytes, from memory when recently served.
    pub async fn bytes(&self, id: &str) -> Result<(FirmwareImage, Arc<[u8]>), FirmwareError> {
        if let Some(found) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(cached, _, _)| cached == id)
            .map(|(_, image, bytes)| (image.clone(), bytes.clone()))
        {
            return Ok(found);
        }
        let image = self
            .get(id)
            .await?
            .ok_or_else(|| FirmwareError::Unknown(id.into()))?;
        let bytes: Arc<[u8]> = self
            .store
            .get_blob(BlobKind::FirmwareImage, &data_key(id))
            .await?
            .ok_or_else(|| FirmwareError::Unknown(id.into()))?
            .into();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED_IMAGES {
            cache.remove(0);
        }
        cache.push((id.to_owned(), image.clone(), bytes.clone()));
        Ok((image, bytes))
    }

    /// Answers `GET /fw/{id}` with the block the device asked for.
    pub async fn serve(&self, request: &Message, block_size: usize) -> Message {
        let segments: Vec<&[u8]> = request.options.get_all(OptionNumber::URI_PATH).collect();
        let id = match segments.as_slice() {
            [fw, id] if *fw == b"fw" => String::from_utf8_lossy(id).into_owned(),
            _ => return Message::response(Code::NOT_FOUND),
        };
        if request.code != Code::GET {
            return Message::response(Code::METHOD_NOT_ALLOWED);
        }
        let (image, bytes) = match self.bytes(&id).await {
            Ok(found) => found,
            Err(FirmwareError::Unknown(_)) => return Message::response(Code::NOT_FOUND),
            Err(error) => {
                tracing::error!(%error, "cannot read a firmware image");
                return Message::response(Code::INTERNAL_SERVER_ERROR);
            }
        };
        let requested = request
            .options
            .get(OptionNumber::BLOCK2)
            .and_then(BlockValue::decode);
        block_response(&image, &bytes, requested, block_size)
    }
}

/// The block of `bytes` a request asked for (the first one without Block2), with Block2,
/// Size2 and ETag.
fn block_response(
    image: &FirmwareImage,
    bytes: &[u8],
    requested: Option<BlockValue>,
    block_size: usize,
) -> Message {
    let largest = block_size.clamp(16, 1024);
    // The device may ask for smaller blocks, never larger than ours.
    let szx = match requested {
        Some(block) => block.szx.min(szx_of(largest)),
        None => szx_of(largest),
    };
    let size = 16usize << szx;
    let offset = requested.map_or(0, BlockValue::offset);
    let num = (offset / size) as u32;
    let start = num as usize * size;
    if start >= bytes.len() {
        return Message::response(Code::BAD_OPTION);
    }
    let end = (start + size).min(bytes.len());
    let mut response = Message::response(Code::CONTENT);
    response
        .options
        .push(OptionNumber::ETAG, image.etag().to_vec());
    response.set_content_format(cairn_coap::ContentFormat::OCTET_STREAM);
    response.options.set_uint(
        OptionNumber::BLOCK2,
        BlockValue {
            num,
            more: end < bytes.len(),
            szx,
        }
        .to_uint(),
    );
    if num == 0 {
        response
            .options
            .set_uint(OptionNumber::SIZE2, bytes.len() as u32);
    }
    response.payload = bytes[start..end].to_vec();
    response
}

fn szx_of(size: usize) -> u8 {
    let mut szx = 0u8;
    while szx < 6 && (32usize << szx) <= size {
        szx += 1;
    }
    szx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: &[u8]) -> FirmwareImage {
        FirmwareImage {
            id: "x".into(),
            name: "fw".into(),
            version: "1".into(),
            size: bytes.len(),
            sha256: Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn blocks_cover_the_image_exactly() {
        let bytes: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let image = image(&bytes);
        let mut assembled = Vec::new();
        let mut num = 0;
        loop {
            let requested = (num > 0).then_some(BlockValue {
                num,
                more: false,
                szx: 6,
            });
            let response = block_response(&image, &bytes, requested, 1024);
            assert_eq!(response.code, Code::CONTENT);
            let block = response
                .options
                .get(OptionNumber::BLOCK2)
                .and_then(BlockValue::decode)
                .unwrap();
            assert_eq!(block.num, num);
            assert_eq!(
                response.options.get(OptionNumber::ETAG),
                Some(&image.etag()[..])
            );
            assembled.extend_from_slice(&response.payload);
            if !block.more {
                break;
            }
            num += 1;
        }
        assert_eq!(assembled, bytes);
        // A smaller block size asked for is honoured; an offset past the end is refused.
        let small = block_response(
            &image,
            &bytes,
            Some(BlockValue {
                num: 3,
                more: false,
                szx: 2,
            }),
            1024,
        );
        assert_eq!(small.payload, bytes[192..256]);
        let past = block_response(
            &image,
            &bytes,
            Some(BlockValue {
                num: 3,
                more: false,
                szx: 6,
            }),
            1024,
        );
        assert_eq!(past.code, Code::BAD_OPTION);
    }
}
