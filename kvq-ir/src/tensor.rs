//! A small owned f32 tensor of shape `[heads, tokens, head_dim]`, the unit every quantizer and
//! attention routine works on.

use thiserror::Error;

/// Errors about tensor shapes and contents.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TensorError {
    /// The data length is not the product of the shape.
    #[error("tensor of shape {shape:?} needs {expected} values, got {actual}")]
    Length {
        /// The declared shape.
        shape: [usize; 3],
        /// Product of the shape.
        expected: usize,
        /// Values supplied.
        actual: usize,
    },
    /// Some dimension is zero.
    #[error("tensor shape {shape:?} has an empty dimension")]
    Empty {
        /// The declared shape.
        shape: [usize; 3],
    },
    /// Two tensors that must agree do not.
    #[error("shape mismatch: {what}")]
    Mismatch {
        /// Which dimensions disagree, with both values.
        what: String,
    },
}

/// The shape `[heads, tokens, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape3 {
    /// Number of (kv or query) heads.
    pub heads: usize,
    /// Number of tokens.
    pub tokens: usize,
    /// Channels per head.
    pub dim: usize,
}

impl Shape3 {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.heads * self.tokens * self.dim
    }

    /// Number of elements, or `None` when it overflows `usize`.
    pub fn checked_len(&self) -> Option<usize> {
        self.heads.checked_mul(self.tokens)?.checked_mul(self.dim)
    }

    /// True when some dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flat index of (head, token, channel), row-major.
    pub fn index(&self, head: usize, token: usize, channel: usize) -> usize {
        (head * self.tokens + token) * self.dim + channel
    }

    /// The shape as an array.
    pub fn dims(&self) -> [usize; 3] {
        [self.heads, self.tokens, self.dim]
    }

    /// Checks that `len` values fill this shape exactly and that no dimension is zero.
    pub fn check_len(&self, len: usize) -> Result<(), TensorError> {
        let shape = self.dims();
        if self.is_empty() {
            return Err(TensorError::Empty { shape });
        }
        if len != self.len() {
            return Err(TensorError::Length {
                shape,
                expected: self.len(),
                actual: len,
            });
        }
        Ok(())
    }
}

/// Row-major f32 data of shape `[heads, tokens, head_dim]`, never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor3 {
    shape: Shape3,
    data: Vec<f32>,
}

impl Tensor3 {
    /// Wraps `data`, checking that it holds exactly `heads * tokens * dim > 0` values.
    pub fn new(shape: [usize; 3], data: Vec<f32>) -> Result<Tensor3, TensorError> {
        let [heads, tokens, dim] = shape;
        let shape3 = Shape3 { heads, tokens, dim };
        shape3.check_len(data.len())?;
        Ok(Tensor3 {
            shape: shape3,
            data,
        })
    }

    /// The shape.
    pub fn shape(&self) -> Shape3 {
        self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The tensor with `f` applied to every value (same shape).
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Tensor3 {
        Tensor3 {
            shape: self.shape,
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }

    /// The value at (head, token, channel).
    pub fn at(&self, head: usize, token: usize, channel: usize) -> f32 {
        self.data[self.shape.index(head, token, channel)]
    }

    /// One (head, token) row of `dim` values.
    pub fn row(&self, head: usize, token: usize) -> &[f32] {
        let start = self.shape.index(head, token, 0);
        &self.data[start..start + self.shape.dim]
    }

    /// The first (head, token, channel) holding a NaN or infinity, with its value.
    pub fn first_non_finite(&self) -> Option<([usize; 3], f32)> {
        let i = self.data.iter().position(|x| !x.is_finite())?;
        let dim = self.shape.dim;
        let tokens = self.shape.tokens;
        Some((
            [i / dim / tokens, (i / dim) % tokens, i % dim],
            self.data[i],
        ))
    }

    /// Tokens `range` of every head, as a new tensor.
    pub fn slice_tokens(&self, range: std::ops::Range<usize>) -> Result<Tensor3, TensorError> {
        if range.start >= range.end || range.end > self.shape.tokens {
            return Err(TensorError::Mismatch {
                what: format!(
                    "token range {range:?} is empty or outside 0..{}",
                    self.shape.tokens
                ),
            });
        }
        let mut data = Vec::with_capacity(self.shape.heads * range.len() * self.shape.dim);
        for h in 0..self.shape.heads {
            let a = self.shape.index(h, range.start, 0);
            let b = self.shape.index(h, range.end - 1, 0) + self.shape.dim;
            data.extend_from_slice(&self.data[a..b]);
        }
        Tensor3::new([self.shape.heads, range.len(), self.shape.dim], data)
    }

    /// The tokens of `self` followed by those of `other`, per head (same heads and dim).
    pub fn concat_tokens(&self, other: &Tensor3) -> Result<Tensor3, TensorError> {
        let (a, b) = (self.shape, other.shape);
        if (a.heads, a.dim) != (b.heads, b.dim) {
            return Err(TensorError::Mismatch {
                what: format!("concatenating {:?} and {:?} tokens", a.dims(), b.dims()),
            });
        }
        let mut data = Vec::with_capacity(self.data.len() + other.data.len());
        for h in 0..a.heads {
            let (sa, sb) = (a.tokens * a.dim, b.tokens * b.dim);
            data.extend_from_slice(&self.data[h * sa..(h + 1) * sa]);
            data.extend_from_slice(&other.data[h * sb..(h + 1) * sb]);
        }
        Tensor3::new([a.heads, a.tokens + b.tokens, a.dim], data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_length_and_empty() {
        assert!(matches!(
            Tensor3::new([2, 3, 4], vec![0.0; 23]),
            Err(TensorError::Length {
                expected: 24,
                actual: 23,
                ..
            })
        ));
        assert!(matches!(
            Tensor3::new([2, 0, 4], vec![]),
            Err(TensorError::Empty { .. })
        ));
    }

    #[test]
    fn finds_first_non_finite_position() {
        let mut data = vec![0.0; 24];
        data[Shape3 {
            heads: 2,
            tokens: 3,
            dim: 4,
        }
        .index(1, 2, 3)] = f32::NAN;
        let t = Tensor3::new([2, 3, 4], data).unwrap();
        let (pos, v) = t.first_non_finite().unwrap();
        assert_eq!(pos, [1, 2, 3]);
        assert!(v.is_nan());
    }

    #[test]
    fn slices_tokens_per_head() {
        let t = Tensor3::new([2, 3, 1], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let s = t.slice_tokens(1..3).unwrap();
        assert_eq!(s.data(), &[1.0, 2.0, 4.0, 5.0]);
        assert!(t.slice_tokens(2..2).is_err());
    }
}
