//! The interpreter. (Being written.)
