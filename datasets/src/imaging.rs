//! Decoding (JPEG, PNG) to RGB8 and resizing to S×S with Pillow-compatible bilinear resampling.
//!
//! - JPEG goes through `zune-jpeg` in strict mode, so a truncated file is an error (like
//!   Pillow's "image file is truncated"), not an image padded with grey. A file that
//!   strict mode rejects but that is complete (it has an end-of-image marker after its
//!   last scan) is decoded leniently, as libjpeg would, with a warning in the log.
//! - PNG goes through the `image` crate. Grey and alpha images become RGB (alpha dropped).
//! - EXIF orientation is not applied (neither Pillow's `Image.open` nor torchvision do).
//! - [`resize_rgb`] resizes ignoring aspect with the *convolution* bilinear filter whose
//!   support grows with the downscale factor — Pillow's `Image.resize(…, BILINEAR)`,
//!   i.e. torchvision's `Resize` — via `fast_image_resize` (SIMD).

use std::cell::RefCell;
use std::path::Path;

use fast_image_resize as fr;

use crate::error::{DatasetError, Result};

/// An 8-bit RGB image, rows top to bottom, pixels `[r, g, b]` interleaved (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

fn decode_error(path: &Path, reason: impl Into<String>) -> DatasetError {
    DatasetError::Decode {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads and decodes an image file to RGB8.
pub fn decode(path: &Path) -> Result<Rgb8Image> {
    let bytes = std::fs::read(path).map_err(|e| DatasetError::io("reading image", path, e))?;
    decode_bytes(&bytes, path)
}

/// Decodes an in-memory JPEG or PNG; `path` only names the image in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<Rgb8Image> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes, path)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
            .map_err(|e| decode_error(path, e.to_string()))?;
        let rgb = img.into_rgb8();
        Ok(Rgb8Image {
            width: rgb.width(),
            height: rgb.height(),
            data: rgb.into_raw(),
        })
    } else if bytes.is_empty() {
        Err(decode_error(path, "the file is empty"))
    } else {
        Err(decode_error(
            path,
            "not a JPEG or PNG file (unknown signature)",
        ))
    }
}

fn jpeg_options(strict: bool) -> zune_core::options::DecoderOptions {
    zune_core::options::DecoderOptions::default()
        .set_strict_mode(strict)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16)
        .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB)
}

fn decode_jpeg(bytes: &[u8], path: &Path) -> Result<Rgb8Image> {
    let run = |strict: bool| -> std::result::Result<Rgb8Image, String> {
        let mut d = zune_jpeg::JpegDecoder::new_with_options(
            zune_core::bytestream::ZCursor::new(bytes),
            jpeg_options(strict),
        );
        let data = d.decode().map_err(|e| e.to_string())?;
        let (w, h) = d.dimensions().ok_or("no image header")?;
        if data.len() != w * h * 3 {
            return Err(format!(
                "decoder returned {} bytes for {w}×{h} RGB",
                data.len()
            ));
        }
        Ok(Rgb8Image {
            width: w as u32,
            height: h as u32,
            data,
        })
    };
    match run(true) {
        Ok(img) => Ok(img),
        Err(strict_err) => {
            if !jpeg_is_complete(bytes) {
                return Err(decode_error(
                    path,
                    format!("the file is truncated (no end-of-image marker after the last scan): {strict_err}"),
                ));
            }
            match run(false) {
                Ok(img) => {
                    tracing::warn!(path = %path.display(), "JPEG is not conformant ({strict_err}); decoded leniently");
                    Ok(img)
                }
                Err(e) => Err(decode_error(path, e)),
            }
        }
    }
}

/// True when an EOI marker (`FF D9`) follows the last start-of-scan marker (`FF DA`).
/// Inside entropy-coded data `FF` is always followed by `00` or a restart marker, so
/// neither pair occurs there by accident; embedded thumbnails precede the main scans.
pub(crate) fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| {
        bytes
            .windows(2)
            .rposition(|w| w[0] == 0xFF && w[1] == marker)
    };
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

thread_local! {
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Resizes an RGB8 image to `width`×`height` ignoring aspect (Pillow-compatible bilinear)
/// into `out` (`width * height * 3` bytes).
pub fn resize_rgb_into(src: &Rgb8Image, width: u32, height: u32, out: &mut [u8]) -> Result<()> {
    let fail = |reason: String| DatasetError::InvalidSetting {
        setting: "image.resize",
        value: format!("{width}x{height}"),
        reason,
    };
    if width == 0 || height == 0 {
        return Err(fail("the target size must be positive".into()));
    }
    if out.len() != width as usize * height as usize * 3 {
        return Err(fail(format!("output buffer has {} bytes", out.len())));
    }
    if src.width == width && src.height == height {
        out.copy_from_slice(&src.data);
        return Ok(());
    }
    let src_view = fr::images::ImageRef::new(src.width, src.height, &src.data, fr::PixelType::U8x3)
        .map_err(|e| fail(format!("source {}×{}: {e}", src.width, src.height)))?;
    let mut dst = fr::images::Image::from_slice_u8(width, height, out, fr::PixelType::U8x3)
        .map_err(|e| fail(e.to_string()))?;
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    RESIZER
        .with(|r| r.borrow_mut().resize(&src_view, &mut dst, &options))
        .map_err(|e| fail(e.to_string()))
}

/// Resizes an RGB8 image to `width`×`height` ignoring aspect (Pillow-compatible bilinear).
pub fn resize_rgb(src: &Rgb8Image, width: u32, height: u32) -> Result<Rgb8Image> {
    let mut data = vec![0u8; width as usize * height as usize * 3];
    resize_rgb_into(src, width, height, &mut data)?;
    Ok(Rgb8Image {
        width,
        height,
        data,
    })
}

/// Decodes `path` and resizes it to `size`×`size` into `out` (`size * size * 3` bytes, HWC RGB).
pub fn load_resized_into(path: &Path, size: u32, out: &mut [u8]) -> Result<()> {
    let img = decode(path)?;
    resize_rgb_into(&img, size, size, out)
}

/// Decodes `path` and resizes it to `size`×`size` (HWC RGB, `size * size * 3` bytes).
pub fn load_resized(path: &Path, size: u32) -> Result<Vec<u8>> {
    let mut out = vec![0u8; size as usize * size as usize * 3];
    load_resized_into(path, size, &mut out)?;
    Ok(out)
}

/// Width and height of a JPEG or PNG, read from its header only: PNG's `IHDR`, or for
/// JPEG the markers up to the first start-of-frame (segments in between are skipped, not
/// read), so a few hundred bytes to a few KB are read per image. The file's last
/// [`TRAILER_WINDOW`] bytes must hold its end marker (JPEG's EOI, PNG's `IEND`), so a
/// truncated download is caught here, at index time, not when it is decoded.
pub fn image_dims(path: &Path) -> Result<(u32, u32)> {
    let f = std::fs::File::open(path).map_err(|e| DatasetError::io("opening image", path, e))?;
    let mut r = std::io::BufReader::with_capacity(4096, f);
    let map_err = |e| match e {
        HeaderError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            decode_error(path, "the file ends inside its header (truncated)")
        }
        HeaderError::Io(e) => DatasetError::io("reading image", path, e),
        HeaderError::Format(reason) => decode_error(path, reason),
    };
    let (dims, png) = header_dims(&mut r).map_err(map_err)?;
    check_trailer(r.get_mut(), png).map_err(map_err)?;
    Ok(dims)
}

/// How far from the end an image's end marker may stand (some cameras append data).
pub const TRAILER_WINDOW: u64 = 4096;

fn check_trailer(f: &mut std::fs::File, png: bool) -> std::result::Result<(), HeaderError> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(TRAILER_WINDOW);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    f.read_to_end(&mut tail)?;
    let (marker, what): (&[u8], &str) = if png {
        (b"IEND", "PNG has no IEND chunk")
    } else {
        (&[0xFF, 0xD9], "JPEG has no end-of-image marker")
    };
    if tail.windows(marker.len()).any(|w| w == marker) {
        Ok(())
    } else {
        Err(HeaderError::Format(format!(
            "the file is truncated ({what} in its last {} bytes)",
            TRAILER_WINDOW.min(len)
        )))
    }
}

enum HeaderError {
    Io(std::io::Error),
    Format(String),
}

impl From<std::io::Error> for HeaderError {
    fn from(e: std::io::Error) -> Self {
        HeaderError::Io(e)
    }
}

fn read_array<const N: usize>(r: &mut impl std::io::Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// The dimensions, and whether the file is a PNG (else a JPEG).
fn header_dims(
    r: &mut std::io::BufReader<std::fs::File>,
) -> std::result::Result<((u32, u32), bool), HeaderError> {
    let sig: [u8; 8] = read_array(r)?;
    if sig == *b"\x89PNG\r\n\x1a\n" {
        // IHDR is the first chunk: length (4), "IHDR", width (4), height (4)
        let chunk: [u8; 16] = read_array(r)?;
        if &chunk[4..8] != b"IHDR" {
            return Err(HeaderError::Format("PNG without IHDR chunk first".into()));
        }
        let w = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
        let h = u32::from_be_bytes([chunk[12], chunk[13], chunk[14], chunk[15]]);
        return if w == 0 || h == 0 {
            Err(HeaderError::Format(format!("PNG header says {w}×{h}")))
        } else {
            Ok(((w, h), true))
        };
    }
    if sig[..2] != [0xFF, 0xD8] {
        return Err(HeaderError::Format(
            "not a JPEG or PNG file (unknown signature)".into(),
        ));
    }
    // Walk the markers after SOI; `sig[2..]` is already consumed.
    r.seek_relative(-6)?;
    loop {
        let mut b: [u8; 1] = read_array(r)?;
        if b[0] != 0xFF {
            return Err(HeaderError::Format(format!(
                "expected a JPEG marker, found byte {:#04x}",
                b[0]
            )));
        }
        while b[0] == 0xFF {
            b = read_array(r)?; // fill bytes
        }
        let marker = b[0];
        match marker {
            // standalone markers: TEM, RSTn
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => {
                return Err(HeaderError::Format(
                    "no start-of-frame marker before the image data".into(),
                ))
            }
            _ => {}
        }
        let len = u16::from_be_bytes(read_array(r)?);
        if len < 2 {
            return Err(HeaderError::Format(format!(
                "JPEG segment {marker:#04x} has length {len}"
            )));
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let sof: [u8; 5] = read_array(r)?;
            let h = u32::from(u16::from_be_bytes([sof[1], sof[2]]));
            let w = u32::from(u16::from_be_bytes([sof[3], sof[4]]));
            if w == 0 || h == 0 {
                return Err(HeaderError::Format(format!(
                    "JPEG frame header says {w}×{h}"
                )));
            }
            return Ok(((w, h), false));
        }
        r.seek_relative(i64::from(len) - 2)?;
    }
}

#[cfg(test)]
mod tests;
