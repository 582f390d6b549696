//! Short texts (failure reasons, topics, uplink JSON) built without `core::fmt`.
//!
//! `format!` pulls the formatting machinery (padding, `Display` tables, `Debug` of `str`)
//! into every firmware, ~10 KiB of flash on a Cortex-M for texts that are only words and
//! integers. [`text!`] concatenates the same pieces with `push_str` and itoa.

use alloc::string::String;

/// A piece of a [`text!`]: a string or an integer.
pub trait Piece {
    /// Appends the piece to `out`.
    fn push_to(&self, out: &mut String);
}

impl Piece for str {
    fn push_to(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl Piece for String {
    fn push_to(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl Piece for alloc::borrow::Cow<'_, str> {
    fn push_to(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl<T: Piece + ?Sized> Piece for &T {
    fn push_to(&self, out: &mut String) {
        (**self).push_to(out);
    }
}

macro_rules! integer_pieces {
    ($($t:ty),*) => {$(
        impl Piece for $t {
            fn push_to(&self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}
integer_pieces!(u64, i64);

// The narrower integers through `u64` and `i64`: one itoa formatter per signedness rather
// than one per width (flash, issue #21; texts are off the body path).
macro_rules! widened_pieces {
    ($($t:ty => $wide:ty),*) => {$(
        impl Piece for $t {
            fn push_to(&self, out: &mut String) {
                (*self as $wide).push_to(out);
            }
        }
    )*};
}
widened_pieces!(u8 => u64, u16 => u64, u32 => u64, usize => u64, i32 => i64);

/// Concatenates strings and integers into a new `String`: `text!("HTTP ", status)`.
macro_rules! text {
    ($($piece:expr),+ $(,)?) => {{
        let mut out = ::alloc::string::String::new();
        $( $crate::text::Piece::push_to(&$piece, &mut out); )+
        out
    }};
}

#[cfg(test)]
mod tests {
    #[test]
    fn concatenates_strings_and_integers() {
        let name = alloc::string::String::from("a.bin");
        let text = text!("file ", name, ": ", 42u64, " of ", -3i64, " ", &*name, 7usize);
        assert_eq!(text, "file a.bin: 42 of -3 a.bin7");
        assert_eq!(text!("only"), "only");
        assert_eq!(text!(u64::MAX), "18446744073709551615");
    }
}
