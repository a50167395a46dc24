//! The text form. (Being written.)
