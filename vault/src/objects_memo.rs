//! Classes' `objects` texts parsed before, kept by their exact text.
//!
//! The upstream driver sends a class's `objects` with every Mount: each pod's first one, and
//! again for every pod at every rotation; kubelet sends it with every NodePublishVolume. Each
//! parse runs libyaml once for the list and once per object, and each parser holds about
//! 64 KiB of buffers that the daemon's allocator zeroes when they are freed. Measured under
//! callgrind (warm Mounts and republishes of a 10-object class), parsing was over half of the
//! daemon's instructions. A text seen before is answered from here instead.
//!
//! A class author controls the text, so what is kept is bounded: at most [`MOST_KEPT`] entries,
//! none weighing more than [`HEAVIEST_KEPT`] bytes, text and parsed objects together (a short
//! text can expand: `objectVersionHistory` copies an object, alias and all, into each slot);
//! heavier ones are parsed every time. The least recently used goes first. Only texts that
//! parsed are kept: a refusal is parsed again, so its error is always the parser's own.
//! Nothing here is secret (a class is not).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::ParamError;
use crate::params::ObjectSpec;

/// Most texts kept at once.
pub const MOST_KEPT: usize = 64;
/// Heaviest entry kept ([`weight`]: its text and its parsed objects): a class of 50 objects
/// with names of 20 characters weighs about 10 KiB (one of 100 is parsed every time). With
/// [`MOST_KEPT`], at most 1 MiB is kept.
pub const HEAVIEST_KEPT: usize = 16 * 1024;

/// The bytes an entry holds: its text, and each object with the strings it owns.
pub fn weight(text: &str, specs: &[ObjectSpec]) -> usize {
    let owned = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    text.len()
        + specs
            .iter()
            .map(|spec| {
                std::mem::size_of::<ObjectSpec>()
                    + spec.name.len()
                    + owned(&spec.version)
                    + owned(&spec.alias)
            })
            .sum::<usize>()
}

struct Kept {
    specs: Arc<[ObjectSpec]>,
    used: u64,
}

/// Parsed texts, least recently used out first.
#[derive(Default)]
pub struct ObjectsMemo {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    kept: HashMap<Box<str>, Kept>,
    clock: u64,
}

impl ObjectsMemo {
    /// The objects of `text`: kept ones if `text` was parsed before, else `parse(text)` (kept
    /// when it succeeds and the entry is light enough). `parse` runs without the lock held.
    pub fn get_or_parse(
        &self,
        text: &str,
        parse: impl FnOnce(&str) -> Result<Vec<ObjectSpec>, ParamError>,
    ) -> Result<Vec<ObjectSpec>, ParamError> {
        if text.len() > HEAVIEST_KEPT {
            return parse(text);
        }
        if let Some(specs) = self.kept(text) {
            return Ok(specs.to_vec());
        }
        let specs = parse(text)?;
        if weight(text, &specs) <= HEAVIEST_KEPT {
            self.keep(text, specs.as_slice().into());
        }
        Ok(specs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn kept(&self, text: &str) -> Option<Arc<[ObjectSpec]>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let kept = inner.kept.get_mut(text)?;
        kept.used = now;
        Some(Arc::clone(&kept.specs))
    }

    fn keep(&self, text: &str, specs: Arc<[ObjectSpec]>) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if !inner.kept.contains_key(text) && inner.kept.len() >= MOST_KEPT {
            let oldest = inner
                .kept
                .iter()
                .min_by_key(|(_, kept)| kept.used)
                .map(|(text, _)| text.clone());
            if let Some(oldest) = oldest {
                inner.kept.remove(&oldest);
            }
        }
        inner.kept.insert(text.into(), Kept { specs, used: now });
    }

    /// How many texts are kept.
    pub fn len(&self) -> usize {
        self.lock().kept.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::parse_objects_uncached;
    use std::cell::Cell;

    /// The real parser, counting its calls in `parses`.
    fn counted(
        parses: &Cell<usize>,
    ) -> impl Fn(&str) -> Result<Vec<ObjectSpec>, ParamError> + Copy + '_ {
        move |text| {
            parses.set(parses.get() + 1);
            parse_objects_uncached(text)
        }
    }

    fn class(name: &str) -> String {
        format!("array:\n  - |\n    objectName: {name}\n    objectType: secret\n")
    }

    #[test]
    fn a_text_is_parsed_once_and_answered_alike_after() {
        let memo = ObjectsMemo::default();
        let parses = Cell::new(0);
        let parse = counted(&parses);
        let first = memo.get_or_parse(&class("a"), parse).expect("valid");
        let again = memo.get_or_parse(&class("a"), parse).expect("kept");
        assert_eq!(first, again);
        assert_eq!(parses.get(), 1);
        memo.get_or_parse(&class("b"), parse).expect("valid");
        assert_eq!(parses.get(), 2);
        assert_eq!(memo.len(), 2);
    }

    #[test]
    fn refusals_and_long_texts_are_parsed_every_time() {
        let memo = ObjectsMemo::default();
        let parses = Cell::new(0);
        let parse = counted(&parses);
        for _ in 0..2 {
            let err = memo.get_or_parse("array: []", parse).expect_err("empty");
            assert_eq!(err.field, "objects");
        }
        assert_eq!(parses.get(), 2);
        let long = format!("{}# {}\n", class("a"), "x".repeat(HEAVIEST_KEPT));
        for _ in 0..2 {
            memo.get_or_parse(&long, parse).expect("valid");
        }
        assert_eq!(parses.get(), 4);
        // A short text that expands: 50 history slots of an object with a 1,000-byte alias.
        let alias = vec!["a".repeat(250); 4].join("/");
        let expands = format!(
            "array:\n  - |\n    objectName: s\n    objectType: secret\n    objectAlias: {alias}\n    objectVersionHistory: 50\n"
        );
        let specs = memo.get_or_parse(&expands, parse).expect("valid");
        assert!(weight(&expands, &specs) > 50 * 1000);
        memo.get_or_parse(&expands, parse).expect("valid");
        assert_eq!(parses.get(), 6);
        assert!(memo.is_empty());
    }

    #[test]
    fn at_most_most_kept_the_least_recently_used_out_first() {
        let memo = ObjectsMemo::default();
        let parses = Cell::new(0);
        let parse = counted(&parses);
        for i in 0..MOST_KEPT {
            memo.get_or_parse(&class(&format!("s{i}")), parse)
                .expect("valid");
        }
        // s0 used again: s1 is now the least recently used.
        memo.get_or_parse(&class("s0"), parse).expect("kept");
        memo.get_or_parse(&class("new"), parse).expect("valid");
        assert_eq!(memo.len(), MOST_KEPT);
        assert_eq!(parses.get(), MOST_KEPT + 1);
        memo.get_or_parse(&class("s0"), parse).expect("still kept");
        assert_eq!(parses.get(), MOST_KEPT + 1);
        memo.get_or_parse(&class("s1"), parse)
            .expect("parsed again");
        assert_eq!(parses.get(), MOST_KEPT + 2);
    }
}
