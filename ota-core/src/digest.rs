//! MD5 and SHA-256 over the image, with a mid-state that can be saved and restored.
//!
//! Saving the mid-state with the durable offset is what lets a download resume after a
//! power loss without trusting arrival order; re-reading the staged prefix and comparing
//! its state with the saved one is what lets it trust the bytes on flash.

use alloc::vec::Vec;
#[cfg(feature = "md5")]
use md5::digest::{common::hazmat::SerializableState, Digest};
#[cfg(not(feature = "md5"))]
use sha2::digest::{common::hazmat::SerializableState, Digest};

use crate::task::{DigestMethod, ExpectedDigest};

/// A running digest of one of the supported methods.
#[derive(Clone)]
pub enum Hasher {
    /// MD5 state.
    #[cfg(feature = "md5")]
    Md5(md5::Md5),
    /// SHA-256 state.
    #[cfg(feature = "sha256")]
    Sha256(sha2::Sha256),
}

impl core::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.method().name())
    }
}

impl Hasher {
    /// A fresh digest.
    pub fn new(method: DigestMethod) -> Self {
        match method {
            #[cfg(feature = "md5")]
            DigestMethod::Md5 => Hasher::Md5(md5::Md5::new()),
            #[cfg(feature = "sha256")]
            DigestMethod::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// The method.
    pub fn method(&self) -> DigestMethod {
        match self {
            #[cfg(feature = "md5")]
            Hasher::Md5(_) => DigestMethod::Md5,
            #[cfg(feature = "sha256")]
            Hasher::Sha256(_) => DigestMethod::Sha256,
        }
    }

    /// Feeds bytes.
    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        match self {
            #[cfg(feature = "md5")]
            Hasher::Md5(h) => h.update(data),
            #[cfg(feature = "sha256")]
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// True when the digest of everything fed so far equals `expected`.
    pub fn matches(&self, expected: &ExpectedDigest) -> bool {
        if self.method() != expected.method() {
            return false;
        }
        match self.clone() {
            #[cfg(feature = "md5")]
            Hasher::Md5(h) => h.finalize().as_slice() == expected.bytes(),
            #[cfg(feature = "sha256")]
            Hasher::Sha256(h) => h.finalize().as_slice() == expected.bytes(),
        }
    }

    /// True when both digests have taken exactly the same bytes so far (as far as the digest
    /// can tell): the resume check compares a re-read prefix with the record's mid-state.
    pub fn same_state(&self, other: &Hasher) -> bool {
        match (self, other) {
            #[cfg(feature = "md5")]
            (Hasher::Md5(a), Hasher::Md5(b)) => a.serialize() == b.serialize(),
            #[cfg(feature = "sha256")]
            (Hasher::Sha256(a), Hasher::Sha256(b)) => a.serialize() == b.serialize(),
            // Unreachable when only one algorithm is compiled in.
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Appends the serialized mid-state to `out`.
    pub fn save_state(&self, out: &mut Vec<u8>) {
        match self {
            #[cfg(feature = "md5")]
            Hasher::Md5(h) => out.extend_from_slice(&h.serialize()),
            #[cfg(feature = "sha256")]
            Hasher::Sha256(h) => out.extend_from_slice(&h.serialize()),
        }
    }

    /// Rebuilds a digest from a saved mid-state; `None` if the bytes are not a valid state.
    pub fn restore(method: DigestMethod, state: &[u8]) -> Option<Self> {
        match method {
            #[cfg(feature = "md5")]
            DigestMethod::Md5 => {
                let array = state.try_into().ok()?;
                md5::Md5::deserialize(array).ok().map(Hasher::Md5)
            }
            #[cfg(feature = "sha256")]
            DigestMethod::Sha256 => {
                let array = state.try_into().ok()?;
                sha2::Sha256::deserialize(array).ok().map(Hasher::Sha256)
            }
        }
    }
}

// The tests compare the two algorithms: they need both.
#[cfg(all(test, feature = "md5", feature = "sha256"))]
mod tests {
    use super::*;

    fn expected(method: DigestMethod, data: &[u8]) -> ExpectedDigest {
        let mut h = Hasher::new(method);
        h.update(data);
        match h {
            Hasher::Md5(h) => ExpectedDigest::new(method, &h.finalize()).unwrap(),
            Hasher::Sha256(h) => ExpectedDigest::new(method, &h.finalize()).unwrap(),
        }
    }

    #[test]
    fn known_answers() {
        let md5 = ExpectedDigest::from_hex(DigestMethod::Md5, "d41d8cd98f00b204e9800998ecf8427e")
            .unwrap();
        assert!(Hasher::new(DigestMethod::Md5).matches(&md5));
        let sha = ExpectedDigest::from_hex(
            DigestMethod::Sha256,
            "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        )
        .unwrap();
        assert!(Hasher::new(DigestMethod::Sha256).matches(&sha));
        assert!(!Hasher::new(DigestMethod::Md5).matches(&sha));
    }

    proptest::proptest! {
        #[test]
        fn a_restored_state_continues_exactly(data in proptest::collection::vec(0u8..=255, 0..300), cut in 0usize..300, sha in proptest::bool::ANY) {
            let method = if sha { DigestMethod::Sha256 } else { DigestMethod::Md5 };
            let cut = cut.min(data.len());
            let mut first = Hasher::new(method);
            first.update(&data[..cut]);
            let mut saved = Vec::new();
            first.save_state(&mut saved);
            let mut resumed = Hasher::restore(method, &saved).unwrap();
            resumed.update(&data[cut..]);
            proptest::prop_assert!(resumed.matches(&expected(method, &data)));
        }
    }

    #[test]
    fn states_compare_equal_only_over_the_same_bytes() {
        let over = |method, data: &[u8]| {
            let mut h = Hasher::new(method);
            h.update(data);
            h
        };
        let a = over(DigestMethod::Md5, &[7; 100]);
        assert!(a.same_state(&over(DigestMethod::Md5, &[7; 100])));
        assert!(!a.same_state(&over(DigestMethod::Md5, &[7; 99])));
        let mut flipped = [7; 100];
        flipped[3] = 8;
        assert!(!a.same_state(&over(DigestMethod::Md5, &flipped)));
        assert!(!a.same_state(&over(DigestMethod::Sha256, &[7; 100])));
        let b = over(DigestMethod::Sha256, &[1; 64]);
        assert!(b.same_state(&over(DigestMethod::Sha256, &[1; 64])));
    }

    #[test]
    fn debug_names_the_method() {
        assert_eq!(
            alloc::format!("{:?}", Hasher::new(DigestMethod::Sha256)),
            "sha256"
        );
    }

    #[test]
    fn garbage_states_are_refused() {
        assert!(Hasher::restore(DigestMethod::Md5, &[1, 2, 3]).is_none());
        let mut saved = Vec::new();
        Hasher::new(DigestMethod::Md5).save_state(&mut saved);
        assert!(Hasher::restore(DigestMethod::Sha256, &saved).is_none());
        // A buffer position beyond the block size is not a valid state.
        let last = saved.len() - 1;
        saved[last] = 0xff;
        assert!(Hasher::restore(DigestMethod::Md5, &saved).is_none());
    }
}
