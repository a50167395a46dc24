//! A bounds check of a GGUF file's header before candle reads it.
//!
//! candle's GGUF reader allocates whatever the header claims (a string's length, an array's
//! count, a tensor's dimension count) before reading it, so a damaged or hostile file can make
//! it ask for terabytes and abort the process. This walk reads the same header (GGUF v1-v3: magic,
//! counts, metadata, tensor infos) without allocating, and refuses any length that runs past the
//! end of the file, any tensor of more than four dimensions, any element count that could
//! not be stored in the file, and an integer `general.alignment` of 0 (candle divides by it).
//! [`check_tensor_data`] then checks each tensor's data range.

use std::io::{BufReader, Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::TensorInfo;

/// GGUF's most dimensions per tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// The deepest nesting of arrays in metadata.
const MAX_ARRAY_DEPTH: u32 = 4;
/// The metadata key of the tensor data's alignment.
const ALIGNMENT_KEY: &[u8] = b"general.alignment";

struct Walk<R> {
    r: R,
    pos: u64,
    len: u64,
    /// Length fields are u32 in GGUF v1, u64 after.
    wide: bool,
}

impl<R: Read + Seek> Walk<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| format!("the header is cut short at byte {}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    /// A count or length field.
    fn count(&mut self) -> Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Skips `n` bytes that must lie inside the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} of {n} bytes at byte {} runs past the end of the file ({} bytes)",
                self.pos, self.len
            ));
        }
        let step = i64::try_from(n).map_err(|_| format!("{what} is too long"))?;
        self.r
            .seek(SeekFrom::Current(step))
            .map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<(), String> {
        let n = self.count()?;
        self.skip(n, what)
    }

    /// A metadata key: whether it is `key` (read only when the lengths match), else skipped.
    fn key_is(&mut self, key: &[u8]) -> Result<bool, String> {
        let n = self.count()?;
        if n != key.len() as u64 {
            self.skip(n, "a metadata key")?;
            return Ok(false);
        }
        let mut b = vec![0u8; key.len()];
        self.r
            .read_exact(&mut b)
            .map_err(|_| format!("the header is cut short at byte {}", self.pos))?;
        self.pos += n;
        Ok(b == key)
    }

    /// An integer value of type `ty` (GGUF's u8, i8, u16, i16, u32, i32), as i64.
    fn small_int(&mut self, ty: u32) -> Result<i64, String> {
        Ok(match ty {
            0 => i64::from(self.bytes::<1>()?[0]),
            1 => i64::from(self.bytes::<1>()?[0] as i8),
            2 => i64::from(u16::from_le_bytes(self.bytes::<2>()?)),
            3 => i64::from(i16::from_le_bytes(self.bytes::<2>()?)),
            4 => i64::from(self.u32()?),
            _ => i64::from(self.u32()? as i32),
        })
    }

    /// `count` items of at least `min` bytes each must fit in the rest of the file.
    fn fits(&self, count: u64, min: u64, what: &str) -> Result<(), String> {
        if count.checked_mul(min).is_none_or(|n| n > self.remaining()) {
            return Err(format!(
                "{what}: {count} items at byte {} cannot fit in the file ({} bytes)",
                self.pos, self.len
            ));
        }
        Ok(())
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<(), String> {
        match ty {
            0 | 1 | 7 => self.skip(1, "a value"),
            2 | 3 => self.skip(2, "a value"),
            4..=6 => self.skip(4, "a value"),
            10..=12 => self.skip(8, "a value"),
            8 => self.string("a string"),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let item = self.u32()?;
                let n = self.count()?;
                // Every item takes at least one byte (a string at least its length field).
                self.fits(n, 1, "an array")?;
                for _ in 0..n {
                    self.value(item, depth + 1)?;
                }
                Ok(())
            }
            other => Err(format!("unknown value type {other} at byte {}", self.pos)),
        }
    }
}

/// Walks the header of the GGUF in `file` (of `len` bytes) and refuses any length that does not
/// fit in it.
pub fn check_header(file: &std::fs::File, len: u64) -> Result<(), String> {
    let mut w = Walk {
        r: BufReader::new(file),
        pos: 0,
        len,
        wide: true,
    };
    if &w.bytes::<4>()? != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic)".to_string());
    }
    w.wide = match w.u32()? {
        1 => false,
        2 | 3 => true,
        v => return Err(format!("unsupported GGUF version {v}")),
    };
    let (tensors, entries) = (w.count()?, w.count()?);
    // A metadata entry takes at least a length field and a type; a tensor info at least a
    // length field, a dimension count, a type and an offset.
    w.fits(entries, 12, "metadata entries")?;
    for _ in 0..entries {
        let alignment = w.key_is(ALIGNMENT_KEY)?;
        let ty = w.u32()?;
        // candle rounds the tensor data's offset up to a multiple of an integer alignment
        // (ignoring a negative one) and divides by zero on 0.
        if alignment && ty <= 5 {
            if w.small_int(ty)? == 0 {
                return Err("general.alignment is 0".to_string());
            }
            continue;
        }
        w.value(ty, 0)?;
    }
    w.fits(tensors, 24, "tensor infos")?;
    for _ in 0..tensors {
        w.string("a tensor name")?;
        let dims = w.u32()?;
        if dims > MAX_DIMS {
            return Err(format!(
                "a tensor with {dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            let d = w.count()?;
            elements = elements
                .checked_mul(d)
                .filter(|&n| n / 8 <= len)
                .ok_or_else(|| format!("a tensor's element count cannot fit in {len} bytes"))?;
        }
        w.skip(4 + 8, "a tensor's type and offset")?;
    }
    Ok(())
}

/// Checks that `info`'s data (at `data_offset + info.offset`) lies inside a file of `len` bytes.
pub fn check_tensor_data(
    name: &str,
    info: &TensorInfo,
    data_offset: u64,
    len: u64,
) -> Result<(), String> {
    let dtype = info.ggml_dtype;
    // candle views a tensor's bytes as blocks; an empty tensor's buffer has no aligned address.
    if info.shape.elem_count() == 0 {
        return Err(format!("tensor {name} has no elements"));
    }
    let blocks = info.shape.elem_count() / dtype.block_size().max(1);
    let end = (blocks as u64)
        .checked_mul(dtype.type_size() as u64)
        .and_then(|size| size.checked_add(info.offset))
        .and_then(|n| n.checked_add(data_offset));
    if end.is_none_or(|end| end > len) {
        return Err(format!(
            "tensor {name}'s data runs past the end of the file ({len} bytes)"
        ));
    }
    Ok(())
}
