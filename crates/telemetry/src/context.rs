//! A hop's place in a distributed trace (W3C Trace Context `traceparent`),
//! the one type every crate uses to read, continue and re-issue it.
//!
//! Written here rather than taken from the OpenTelemetry SDK: Gantry only
//! reads, validates and re-issues one 55-byte header per hop, which is a few
//! lines and no allocation, and it runs on every request.

/// One hop's trace context: the trace, this hop's span, its caller's span,
/// and the trace flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// This hop's span id, sent onward as the parent.
    pub span_id: u64,
    /// The caller's span id, when the trace was continued.
    pub parent_id: Option<u64>,
    pub flags: u8,
}

/// The `sampled` trace flag.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A new trace (no caller), its sampled flag set as `sampled` says.
    pub fn start(sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: loop {
                let id = fastrand::u128(..);
                if id != 0 {
                    break id;
                }
            },
            span_id: nonzero_u64(),
            parent_id: None,
            flags: if sampled { SAMPLED } else { 0 },
        }
    }

    /// A new span under the caller whose `traceparent` this is, when it is
    /// valid. The caller's flags are kept (parent-based sampling).
    pub fn continued(traceparent: &[u8]) -> Option<TraceContext> {
        let (trace_id, parent_id, flags) = parse(traceparent)?;
        Some(TraceContext {
            trace_id,
            span_id: nonzero_u64(),
            parent_id: Some(parent_id),
            flags,
        })
    }

    /// Continues `traceparent` when there is a valid one, else starts a trace
    /// whose sampled flag `sample(trace_id)` decides.
    pub fn continue_or_start(
        traceparent: Option<&[u8]>,
        sample: impl FnOnce(u128) -> bool,
    ) -> TraceContext {
        match traceparent.and_then(TraceContext::continued) {
            Some(context) => context,
            None => {
                let mut context = TraceContext::start(true);
                context.set_sampled(sample(context.trace_id));
                context
            }
        }
    }

    /// A new span in the same trace, under this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: nonzero_u64(),
            parent_id: Some(self.span_id),
            flags: self.flags,
        }
    }

    /// Whether the trace was chosen to be kept where it started.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    pub fn set_sampled(&mut self, sampled: bool) {
        if sampled {
            self.flags |= SAMPLED;
        } else {
            self.flags &= !SAMPLED;
        }
    }

    /// The `traceparent` that makes this hop the parent, as bytes
    /// (formatted by hand: `format!` of a u128 as hex is several times slower).
    pub fn traceparent_bytes(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut out[3..35], self.trace_id);
        write_hex(&mut out[36..52], u128::from(self.span_id));
        write_hex(&mut out[53..55], u128::from(self.flags));
        out
    }

    /// [`TraceContext::traceparent_bytes`] as text.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// The trace id, displayed as 32 hex digits without allocating.
    pub fn trace_id(&self) -> HexId {
        HexId::trace(self.trace_id)
    }

    pub fn trace_id_hex(&self) -> String {
        self.trace_id().to_string()
    }

    pub fn span_id_hex(&self) -> String {
        HexId::span(self.span_id).to_string()
    }

    pub fn parent_id_hex(&self) -> Option<String> {
        self.parent_id.map(|p| HexId::span(p).to_string())
    }
}

/// A trace id (32 hex digits) or span id (16), for logs and spans.
#[derive(Debug, Clone, Copy)]
pub struct HexId {
    value: u128,
    digits: usize,
}

impl HexId {
    pub fn trace(value: u128) -> HexId {
        HexId { value, digits: 32 }
    }

    pub fn span(value: u64) -> HexId {
        HexId {
            value: u128::from(value),
            digits: 16,
        }
    }
}

impl std::fmt::Display for HexId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = [0u8; 32];
        let out = &mut out[..self.digits];
        write_hex(out, self.value);
        f.write_str(std::str::from_utf8(out).unwrap_or_default())
    }
}

/// Fills `out` with the low `out.len()` hex digits of `value`, lowercase.
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// `version-traceid-parentid-flags`, lowercase hex. Versions above 00 may carry
/// more fields after the flags, which are ignored as the spec asks.
fn parse(value: &[u8]) -> Option<(u128, u64, u8)> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    let trace_id = u128::from_str_radix(lower_hex(&value[3..35])?, 16).ok()?;
    let parent_id = u64::from_str_radix(lower_hex(&value[36..52])?, 16).ok()?;
    let flags = hex_u8(&value[53..55])?;
    (trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags))
}

fn lower_hex(bytes: &[u8]) -> Option<&str> {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        .then(|| std::str::from_utf8(bytes).ok())
        .flatten()
}

fn hex_u8(bytes: &[u8]) -> Option<u8> {
    u8::from_str_radix(lower_hex(bytes)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let context = TraceContext::continued(CALLER.as_bytes()).unwrap();
        assert_eq!(context.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(context.parent_id_hex().as_deref(), Some("b7ad6b7169203331"));
        assert_ne!(context.span_id, 0xb7ad6b7169203331);
        assert!(context.sampled());
        let sent = context.traceparent();
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(sent.ends_with(&format!("-{}-01", context.span_id_hex())));
    }

    #[test]
    fn the_callers_sampling_decision_is_kept() {
        let unsampled = CALLER.replace("-01", "-00");
        let context = TraceContext::continue_or_start(Some(unsampled.as_bytes()), |_| true);
        assert!(!context.sampled());
        assert!(context.traceparent().ends_with("-00"));
        assert!(!context.child().sampled());
    }

    #[test]
    fn a_new_trace_asks_the_sampler() {
        assert!(!TraceContext::continue_or_start(None, |_| false).sampled());
        assert!(TraceContext::continue_or_start(Some(b"garbage"), |_| true).sampled());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(TraceContext::continued(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version may add fields.
        let future = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra";
        assert!(TraceContext::continued(future.as_bytes()).is_some());
    }

    #[test]
    fn ids_render_as_fixed_width_hex() {
        assert_eq!(HexId::span(1).to_string(), "0000000000000001");
        assert_eq!(
            HexId::trace(u128::MAX).to_string(),
            "ffffffffffffffffffffffffffffffff"
        );
    }
}
