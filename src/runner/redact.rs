//! Redacting secrets from a run's output as it streams to `logs.txt`.
//!
//! Output arrives in reads of whatever size the pipe or Docker hands over, so a secret can be
//! split between two reads. [`LogRedactor`] holds back the end of a read while it could still be
//! the beginning of a secret (at most the longest secret's length minus one byte) and decides
//! when the next read arrives, or at [`LogRedactor::finish`]. It works on bytes: a read that ends
//! inside a multi-byte UTF-8 character is not mangled either.
//!
//! Invariant: the concatenation of everything [`LogRedactor::push`] and
//! [`LogRedactor::finish`] return equals the whole output with every secret occurrence replaced
//! by `(sensitive)`, however the output was split.

use crate::plan::sensitive::SHOWN;

/// Secrets shorter than this are not redacted: they would blank out ordinary text (the same rule
/// as [`crate::plan::sensitive::redact`]).
const MIN_SECRET_LEN: usize = 3;

/// Redacts secrets from one stream of output, read in chunks.
#[derive(Debug)]
pub struct LogRedactor {
    /// Longest first, so that a secret containing another is replaced whole.
    secrets: Vec<Vec<u8>>,
    /// Raw bytes held back: they may be the start of a secret that the next read completes.
    pending: Vec<u8>,
}

impl LogRedactor {
    pub fn new(secrets: &[String]) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .map(|s| s.as_bytes().to_vec())
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Self {
            secrets,
            pending: Vec::new(),
        }
    }

    /// The redacted bytes of `chunk` that can be written now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(chunk);
        self.redact(&input, false)
    }

    /// What is still held back, redacted, once the stream has ended.
    pub fn finish(&mut self) -> Vec<u8> {
        let pending = std::mem::take(&mut self.pending);
        self.redact(&pending, true)
    }

    /// Redact `input`; unless `last`, keep back an end that a longer secret could still match.
    fn redact(&mut self, input: &[u8], last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        let mut index = 0;
        while index < input.len() {
            let rest = &input[index..];
            if !last
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                // The rest may begin a secret (or a longer one than it already holds): wait for
                // the next read to decide.
                self.pending = rest.to_vec();
                break;
            }
            if let Some(secret) = self.secrets.iter().find(|s| rest.starts_with(s)) {
                out.extend_from_slice(SHOWN.as_bytes());
                index += secret.len();
            } else {
                out.push(input[index]);
                index += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_in_chunks(text: &str, secrets: &[&str], sizes: &[usize]) -> String {
        let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_string()).collect();
        let mut redactor = LogRedactor::new(&secrets);
        let mut out = Vec::new();
        let mut rest = text.as_bytes();
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            out.extend(redactor.push(&rest[..size]));
            rest = &rest[size..];
        }
        out.extend(redactor.finish());
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_secret_split_across_reads_is_redacted_at_every_split_point() {
        let text = "before hunter22 middle hunter22after";
        for split in 1..text.len() {
            assert_eq!(
                redact_in_chunks(text, &["hunter22"], &[split, text.len()]),
                "before (sensitive) middle (sensitive)after",
                "split at {split}"
            );
        }
        assert_eq!(
            redact_in_chunks(text, &["hunter22"], &[1]),
            "before (sensitive) middle (sensitive)after"
        );
    }

    #[test]
    fn a_short_secret_held_back_for_a_longer_one_is_redacted_at_finish() {
        assert_eq!(
            redact_in_chunks("k=abc", &["abc", "abcdef"], &[5]),
            "k=(sensitive)"
        );
    }

    #[test]
    fn a_partial_secret_at_the_end_of_the_output_is_written_at_finish() {
        assert_eq!(redact_in_chunks("x hunt", &["hunter22"], &[3]), "x hunt");
        let mut redactor = LogRedactor::new(&["hunter22".into()]);
        assert_eq!(redactor.push(b"x hun"), b"x ");
        assert_eq!(redactor.finish(), b"hun");
    }

    #[test]
    fn only_the_possible_start_of_a_secret_is_held_back() {
        let mut redactor = LogRedactor::new(&["secret".into()]);
        assert_eq!(redactor.push(b"plain text\n"), b"plain text\n");
        assert_eq!(redactor.push(b"a se"), b"a ");
        assert_eq!(redactor.push(b"quel"), b"sequel");
    }

    #[test]
    fn overlapping_and_nested_secrets_are_redacted_whole() {
        assert_eq!(
            redact_in_chunks("k=abcdef k=abc", &["abc", "abcdef"], &[2]),
            "k=(sensitive) k=(sensitive)"
        );
        // A partial match that fails must not hide a secret starting inside it.
        assert_eq!(redact_in_chunks("aaab", &["aab"], &[1]), "a(sensitive)");
    }

    #[test]
    fn multi_byte_characters_split_across_reads_survive() {
        let text = "température ✓ pw-ü-secret ✓";
        assert_eq!(
            redact_in_chunks(text, &["pw-ü-secret"], &[1, 2, 3]),
            "température ✓ (sensitive) ✓"
        );
    }

    #[test]
    fn short_and_absent_secrets_change_nothing() {
        assert_eq!(redact_in_chunks("a ab abc", &["ab", ""], &[1]), "a ab abc");
        assert_eq!(redact_in_chunks("text", &[], &[2]), "text");
    }
}
