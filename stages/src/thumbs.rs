//! Small JPEG thumbnails as `data:` URIs, for a self-contained HTML report: cut from the
//! decode cache (memory-mapped, already resized, nothing to decode) or, where a store has
//! no decode cache, decoded from the image files. The index's width and height give each
//! thumbnail its image's aspect ratio back (the cache stores squares).
use crate::retrievals::Catalogue;
use dml_datasets::DecodeCache;
use image::{imageops, RgbImage};
use rayon::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

/// Where thumbnails are cut from.
pub enum ImageSource {
    /// A decode cache whose order is the index's.
    Cache(DecodeCache),
    /// The image files: index paths relative to this root.
    Files(PathBuf),
    /// No images: why, as the report says it.
    Missing(String),
}

/// JPEG quality of the thumbnails: small files, still clear at their size.
const QUALITY: u8 = 80;

/// The thumbnails of a set of images, by image id.
#[derive(Debug, Default)]
pub struct Thumbnails {
    uris: HashMap<u32, String>,
    /// Images that could not be made (a skipped image, an unreadable file).
    pub failed: usize,
    /// Why there are none at all, when there are none.
    pub missing: Option<String>,
}

impl Thumbnails {
    /// Thumbnails of `ids` whose longer side is `size` pixels, made in parallel.
    pub fn build(source: &ImageSource, cat: &Catalogue, ids: &BTreeSet<u32>, size: u32) -> Self {
        if let ImageSource::Missing(why) = source {
            return Thumbnails {
                missing: Some(why.clone()),
                ..Default::default()
            };
        }
        let made: Vec<(u32, Option<String>)> = ids
            .par_iter()
            .map(|&id| (id, thumbnail(source, cat, id, size).map(|j| jpeg_uri(&j))))
            .collect();
        let failed = made.iter().filter(|(_, u)| u.is_none()).count();
        Thumbnails {
            uris: made
                .into_iter()
                .filter_map(|(id, u)| Some((id, u?)))
                .collect(),
            failed,
            missing: None,
        }
    }

    /// The `data:image/jpeg;base64,…` URI of an image, if it has one.
    pub fn uri(&self, id: u32) -> Option<&str> {
        self.uris.get(&id).map(String::as_str)
    }

    /// Bytes of all the URIs (for the size figures).
    pub fn bytes(&self) -> usize {
        self.uris.values().map(String::len).sum()
    }
}

/// The thumbnail's size: longer side `size`, the image's own aspect ratio.
fn fit(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (w, h) = (width.max(1) as f64, height.max(1) as f64);
    let scale = size as f64 / w.max(h);
    (
        ((w * scale).round() as u32).max(1),
        ((h * scale).round() as u32).max(1),
    )
}

/// One thumbnail as JPEG bytes, or `None` when the image is not there.
fn thumbnail(source: &ImageSource, cat: &Catalogue, id: u32, size: u32) -> Option<Vec<u8>> {
    let row = cat.rows.get(id as usize)?;
    let (w, h) = fit(row.width, row.height, size);
    let img: RgbImage = match source {
        ImageSource::Cache(cache) => {
            // The cache must be the index's: same path at the same position.
            if cache.path(id as usize) != Some(row.path.as_str()) {
                return None;
            }
            let s = cache.size();
            let pixels = cache.try_get(id as usize)?;
            let square = RgbImage::from_raw(s, s, pixels.to_vec())?;
            imageops::thumbnail(&square, w, h)
        }
        ImageSource::Files(root) => {
            let full = image::open(root.join(&row.path)).ok()?.to_rgb8();
            imageops::thumbnail(&full, w, h)
        }
        ImageSource::Missing(_) => return None,
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, QUALITY)
        .encode_image(&img)
        .ok()?;
    Some(out)
}

/// The thumbnail of an image file (longer side `size`, its own aspect ratio) as a
/// `data:image/jpeg;base64,…` URI, or `None` when it cannot be read or decoded.
pub fn file_thumbnail(path: &std::path::Path, size: u32) -> Option<String> {
    let full = image::open(path).ok()?.to_rgb8();
    let (w, h) = fit(full.width(), full.height(), size);
    let img = imageops::thumbnail(&full, w, h);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, QUALITY)
        .encode_image(&img)
        .ok()?;
    Some(jpeg_uri(&out))
}

fn jpeg_uri(jpeg: &[u8]) -> String {
    format!("data:image/jpeg;base64,{}", base64(jpeg))
}

/// A `data:image/png;base64,…` URI.
pub fn png_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64(png))
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_artifacts::tables::IndexRow;

    #[test]
    fn base64_is_rfc_4648() {
        // RFC 4648 section 10's test vectors.
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_decode_as_jpeg() {
        assert_eq!(fit(500, 375, 64), (64, 48));
        assert_eq!(fit(10, 40, 64), (16, 64));
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("images");
        std::fs::create_dir_all(&root).unwrap();
        let mut rows = Vec::new();
        for i in 0..3u32 {
            let path = format!("{i}.png");
            let img = RgbImage::from_fn(40, 20, |x, y| {
                image::Rgb([x as u8 * 6, y as u8 * 12, 40 * i as u8])
            });
            img.save(root.join(&path)).unwrap();
            rows.push(IndexRow {
                image_id: i,
                path,
                class_id: i,
                class_name: format!("c{i}"),
                split: dml_datasets::Split::Test,
                width: 40,
                height: 20,
                bytes: 1,
                blake3: String::new(),
                dataset_image_id: None,
            });
        }
        let cat = Catalogue::new(rows).unwrap();
        let paths: Vec<String> = cat.rows.iter().map(|r| r.path.clone()).collect();
        let cache_dir = tmp.path().join("cache");
        DecodeCache::build(&root, &paths, 32, &cache_dir, false).unwrap();
        let ids: BTreeSet<u32> = [0, 2, 7].into_iter().collect();
        for source in [
            ImageSource::Cache(DecodeCache::open(&cache_dir).unwrap()),
            ImageSource::Files(root.clone()),
        ] {
            let t = Thumbnails::build(&source, &cat, &ids, 24);
            assert_eq!(t.failed, 1, "id 7 is not in the index");
            for id in [0, 2] {
                let uri = t.uri(id).unwrap();
                let b64 = uri.strip_prefix("data:image/jpeg;base64,").unwrap();
                let bytes = decode_b64(b64);
                let img =
                    image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
                assert_eq!((img.width(), img.height()), (24, 12));
                // The colour survives: image 2's blue channel is 80.
                let px = img.to_rgb8().get_pixel(12, 6).0;
                if id == 2 {
                    assert!((i32::from(px[2]) - 80).abs() < 16, "{px:?}");
                }
            }
            assert!(t.uri(1).is_none());
        }
        let none = Thumbnails::build(&ImageSource::Missing("gone".into()), &cat, &ids, 24);
        assert_eq!(none.missing.as_deref(), Some("gone"));
        assert!(none.uri(0).is_none());
    }

    fn decode_b64(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for chunk in s.as_bytes().chunks(4) {
            let pad = chunk.iter().filter(|&&c| c == b'=').count();
            let n = chunk
                .iter()
                .map(|&c| if c == b'=' { 0 } else { u32::from(val(c)) })
                .fold(0u32, |a, v| a << 6 | v);
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        out
    }
}
