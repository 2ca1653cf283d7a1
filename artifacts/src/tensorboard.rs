//! TensorBoard event files, written (and read back) by hand: the TFRecord framing
//! (length, masked CRC32C of the length, data, masked CRC32C of the data) around
//! `tensorflow.Event` protocol buffers whose `Summary` holds scalars (`simple_value`).
//!
//! Only what scalars need is encoded, field by field as `event.proto` and
//! `summary.proto` number them:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! Every file starts with the `file_version = "brain.Event:2"` event, which also tells
//! TensorBoard that steps may go back (a baseline logged at step 0 after later steps)
//! without its purge of "orphaned" data. TensorBoard finds event files by `tfevents` in
//! the file name; the names here are fixed ([`TRAIN_EVENTS`]) so that an artifact's
//! files do not depend on the clock.
use crate::tables::TrainLogRow;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The train stage's event file, in its artifact.
pub const TRAIN_EVENTS: &str = "events.out.tfevents.dml-train";
/// The report stage's event files: the final test metrics of run `i` at its last step
/// (and the untrained network's at step 0), `tensorboard/<i>/` + this name.
pub const TEST_EVENTS: &str = "events.out.tfevents.dml-test";

/// The `file_version` every event file starts with.
const FILE_VERSION: &str = "brain.Event:2";

/// Errors reading or writing an event file.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record's framing or checksum is wrong, or its event cannot be decoded.
    #[error("{path}: {what} at byte {offset} (not a TensorBoard event file, or a damaged one)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
        /// Where the record starts.
        offset: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EventError + '_ {
    move |source| EventError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The CRC-32C (Castagnoli) lookup table, reflected polynomial 0x82F63B78.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C of `data` (iSCSI, RFC 3720), as TFRecord uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masked CRC: rotated right by 15 bits, plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: `u64` length, masked CRC of the length, data, masked CRC of the data.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// The encoded `Event` header: wall time and step.
fn event_head(wall_time: f64, step: i64) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(1 << 3 | 1); // wall_time: fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(2 << 3); // step: varint (two's complement for negatives, as int64)
    varint(&mut e, step as u64);
    e
}

/// An `Event` carrying `file_version`.
pub fn encode_file_version(wall_time: f64) -> Vec<u8> {
    let mut e = event_head(wall_time, 0);
    bytes_field(&mut e, 3, FILE_VERSION.as_bytes());
    e
}

/// An `Event` whose summary holds one scalar per `(tag, value)`.
pub fn encode_scalars(wall_time: f64, step: i64, values: &[(&str, f64)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in values {
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        v.push(2 << 3 | 5); // simple_value: fixed32 float
        v.extend_from_slice(&(*value as f32).to_le_bytes());
        bytes_field(&mut summary, 1, &v);
    }
    let mut e = event_head(wall_time, step);
    bytes_field(&mut e, 5, &summary);
    e
}

/// Seconds since the Unix epoch, as event wall times are.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes scalars into one event file, record by record.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates (or truncates) `path` and writes the file-version event stamped `wall_time`.
    pub fn create(path: &Path, wall_time: f64) -> Result<Self, EventError> {
        let file = File::create(path).map_err(io_err(path))?;
        let mut w = EventWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        };
        w.record(&encode_file_version(wall_time))?;
        Ok(w)
    }

    fn record(&mut self, event: &[u8]) -> Result<(), EventError> {
        self.out
            .write_all(&frame(event))
            .map_err(io_err(&self.path))
    }

    /// Appends one event with the scalars of `step` (non-finite values are left out, as
    /// TensorBoard would draw them as gaps anyway).
    pub fn scalars(
        &mut self,
        step: i64,
        wall_time: f64,
        values: &[(&str, f64)],
    ) -> Result<(), EventError> {
        let finite: Vec<(&str, f64)> = values
            .iter()
            .copied()
            .filter(|(_, v)| v.is_finite())
            .collect();
        if finite.is_empty() {
            return Ok(());
        }
        self.record(&encode_scalars(wall_time, step, &finite))
    }

    /// Pushes what is buffered to the file (so that a live TensorBoard sees it).
    pub fn flush(&mut self) -> Result<(), EventError> {
        self.out.flush().map_err(io_err(&self.path))
    }

    /// Flushes and closes the file.
    pub fn finish(mut self) -> Result<(), EventError> {
        self.flush()?;
        self.out.get_ref().sync_all().map_err(io_err(&self.path))
    }
}

/// The tags of the train stage's event file, one per `train_log.parquet` column it logs
/// (`images_per_second` is the step's images over its wall seconds).
pub const TRAIN_TAGS: [&str; 10] = [
    "train/loss",
    "train/lr",
    "train/active_fraction",
    "train/mean_pos_dist",
    "train/mean_neg_dist",
    "train/mean_norm",
    "train/images_per_second",
    "train/data_wait_s",
    "validation/recall@1",
    "validation/map@r",
];

/// The scalars of one training step: `images` went through it in `step_seconds`.
pub fn train_scalars(
    row: &TrainLogRow,
    images: usize,
    step_seconds: f64,
) -> Vec<(&'static str, f64)> {
    let mut v = vec![
        (TRAIN_TAGS[0], row.loss),
        (TRAIN_TAGS[1], row.lr),
        (TRAIN_TAGS[2], row.active_fraction),
        (TRAIN_TAGS[3], row.mean_pos_dist),
        (TRAIN_TAGS[4], row.mean_neg_dist),
        (TRAIN_TAGS[5], row.mean_norm),
        (
            TRAIN_TAGS[6],
            if step_seconds > 0.0 {
                images as f64 / step_seconds
            } else {
                f64::NAN
            },
        ),
        (TRAIN_TAGS[7], row.data_wait_s),
    ];
    if let Some(r) = row.val_recall_at_1 {
        v.push((TRAIN_TAGS[8], r));
    }
    if let Some(m) = row.val_map_at_r {
        v.push((TRAIN_TAGS[9], m));
    }
    v
}

/// The train stage's event file, written step by step as training goes (and flushed, so
/// that a TensorBoard pointed at the artifact being written follows it).
pub struct TrainEvents {
    writer: EventWriter,
    /// Wall time of `seconds = 0` in the log.
    start_wall: f64,
    prev_seconds: f64,
    images: usize,
}

impl TrainEvents {
    /// Creates `dir/`[`TRAIN_EVENTS`] holding the rows logged so far (a resumed run's),
    /// dated back from now by their `seconds`; `images` per step.
    pub fn create(dir: &Path, so_far: &[TrainLogRow], images: usize) -> Result<Self, EventError> {
        let now = now();
        let start_wall = now - so_far.last().map_or(0.0, |r| r.seconds);
        let mut t = TrainEvents {
            writer: EventWriter::create(&dir.join(TRAIN_EVENTS), start_wall)?,
            start_wall,
            prev_seconds: 0.0,
            images,
        };
        for row in so_far {
            t.push(row)?;
        }
        t.writer.flush()?;
        Ok(t)
    }

    fn push(&mut self, row: &TrainLogRow) -> Result<(), EventError> {
        let dt = row.seconds - self.prev_seconds;
        self.prev_seconds = row.seconds;
        self.writer.scalars(
            i64::from(row.step),
            self.start_wall + row.seconds,
            &train_scalars(row, self.images, dt),
        )
    }

    /// Appends one step.
    pub fn row(&mut self, row: &TrainLogRow) -> Result<(), EventError> {
        self.push(row)?;
        self.writer.flush()
    }

    /// Closes the file.
    pub fn finish(self) -> Result<(), EventError> {
        self.writer.finish()
    }
}

/// Writes a whole training log as an event file at `path` (for train artifacts made before
/// the train stage wrote one): wall times count from the log's first second.
pub fn write_train_log(
    path: &Path,
    log: &[TrainLogRow],
    images: usize,
    start_wall: f64,
) -> Result<(), EventError> {
    let mut w = EventWriter::create(path, start_wall)?;
    let mut prev = 0.0;
    for row in log {
        w.scalars(
            i64::from(row.step),
            start_wall + row.seconds,
            &train_scalars(row, images, row.seconds - prev),
        )?;
        prev = row.seconds;
    }
    w.finish()
}

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The event's wall time.
    pub wall_time: f64,
    /// The step.
    pub step: i64,
    /// The tag.
    pub tag: String,
    /// The value (stored as `f32`).
    pub value: f32,
}

/// What an event file holds: its file version and every scalar, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Events {
    /// `brain.Event:2` for files TensorBoard reads without purging.
    pub file_version: Option<String>,
    /// Every scalar, in file order.
    pub scalars: Vec<Scalar>,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    /// The next `(field, wire type, payload)`; varints come back as their 8 LE bytes.
    fn field(&mut self) -> Option<(u32, u8, Vec<u8>)> {
        let key = self.varint()?;
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        let payload = match wire {
            0 => self.varint()?.to_le_bytes().to_vec(),
            1 => self.take(8)?.to_vec(),
            2 => {
                let n = self.varint()? as usize;
                self.take(n)?.to_vec()
            }
            5 => self.take(4)?.to_vec(),
            _ => return None,
        };
        Some((field, wire, payload))
    }
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

fn le_f64(b: &[u8]) -> Option<f64> {
    Some(f64::from_le_bytes(b.try_into().ok()?))
}

/// Decodes one `Event`: its file version, or its scalars.
fn decode_event(data: &[u8], out: &mut Events) -> Option<()> {
    let mut c = Cursor { data, pos: 0 };
    let (mut wall_time, mut step, mut summary) = (0.0, 0i64, None);
    while !c.done() {
        match c.field()? {
            (1, 1, b) => wall_time = le_f64(&b)?,
            (2, 0, b) => step = i64::from_le_bytes(b.try_into().ok()?),
            (3, 2, b) => out.file_version = Some(String::from_utf8(b).ok()?),
            (5, 2, b) => summary = Some(b),
            _ => {}
        }
    }
    let Some(summary) = summary else {
        return Some(());
    };
    let mut s = Cursor {
        data: &summary,
        pos: 0,
    };
    while !s.done() {
        let (field, wire, value) = s.field()?;
        if (field, wire) != (1, 2) {
            continue;
        }
        let mut v = Cursor {
            data: &value,
            pos: 0,
        };
        let (mut tag, mut scalar) = (None, None);
        while !v.done() {
            match v.field()? {
                (1, 2, b) => tag = Some(String::from_utf8(b).ok()?),
                (2, 5, b) => scalar = Some(f32::from_le_bytes(b.try_into().ok()?)),
                _ => {}
            }
        }
        if let (Some(tag), Some(value)) = (tag, scalar) {
            out.scalars.push(Scalar {
                wall_time,
                step,
                tag,
                value,
            });
        }
    }
    Some(())
}

/// Reads an event file, checking every record's framing and both checksums.
pub fn read_events(path: &Path) -> Result<Events, EventError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    let corrupt = |what, offset: usize| EventError::Corrupt {
        path: path.to_path_buf(),
        what,
        offset: offset as u64,
    };
    let mut out = Events::default();
    let mut pos = 0usize;
    while pos < data.len() {
        let head = data
            .get(pos..pos + 12)
            .ok_or_else(|| corrupt("a truncated record header", pos))?;
        let (len, crc) = head.split_at(8);
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != masked_crc32c(len) {
            return Err(corrupt("a wrong length checksum", pos));
        }
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
        let body = data
            .get(pos + 12..(pos + 12).saturating_add(n).saturating_add(4))
            .ok_or_else(|| corrupt("a truncated record", pos))?;
        let (event, crc) = body.split_at(n);
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != masked_crc32c(event) {
            return Err(corrupt("a wrong data checksum", pos));
        }
        decode_event(event, &mut out).ok_or_else(|| corrupt("an undecodable event", pos))?;
        pos += 16 + n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // RFC 3720 B.4 and the common "123456789" check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn events_round_trip_and_damage_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(TRAIN_EVENTS);
        let mut w = EventWriter::create(&path, 1000.5).unwrap();
        w.scalars(0, 1001.0, &[("train/loss", 0.75), ("train/lr", 3e-4)])
            .unwrap();
        w.scalars(7, 1002.0, &[("validation/recall@1", 0.5), ("x", f64::NAN)])
            .unwrap();
        w.scalars(-3, 1003.0, &[("neg", -2.5)]).unwrap();
        w.scalars(9, 1004.0, &[("nan only", f64::NAN)]).unwrap();
        w.finish().unwrap();
        let e = read_events(&path).unwrap();
        assert_eq!(e.file_version.as_deref(), Some("brain.Event:2"));
        let got: Vec<(i64, &str, f32, f64)> = e
            .scalars
            .iter()
            .map(|s| (s.step, s.tag.as_str(), s.value, s.wall_time))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "train/loss", 0.75, 1001.0),
                (0, "train/lr", 3e-4_f64 as f32, 1001.0),
                (7, "validation/recall@1", 0.5, 1002.0),
                (-3, "neg", -2.5, 1003.0),
            ]
        );
        // Every flipped byte is caught by one of the two checksums (or the framing).
        let bytes = std::fs::read(&path).unwrap();
        for i in (0..bytes.len()).step_by(3) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            let p = tmp.path().join("bad");
            std::fs::write(&p, &bad).unwrap();
            assert!(read_events(&p).is_err(), "byte {i}");
        }
        let p = tmp.path().join("short");
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_events(&p).is_err());
    }
}
