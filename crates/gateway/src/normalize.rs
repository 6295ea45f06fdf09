//! Path normalisation before routing, so that the path a route matched is the
//! path the upstream serves.
//!
//! Upstream servers resolve `/x/../admin`, `//admin` and `/%61dmin` to
//! `/admin`. A gateway that matched the raw text would send those requests
//! down an open catch-all route while the upstream serves them as the
//! protected path. So, before routing (the same steps as Envoy's
//! `normalize_path` + `merge_slashes` + `path_with_escaped_slashes_action`):
//!
//! 1. percent-encoded *unreserved* characters (RFC 3986 §2.3: letters, digits,
//!    `-` `.` `_` `~`) are decoded, other escapes keep their encoding with
//!    uppercase hex (§6.2.2.1); a malformed escape or an encoded NUL is refused;
//! 2. encoded `/` and `\` (`%2F`, `%5C`) and a raw `\` are refused, kept, or
//!    decoded to `/`, as `[platform] escaped_slashes` says;
//! 3. repeated slashes are merged;
//! 4. dot segments are removed (§5.2.4), including `%2E`-encoded ones, which
//!    step 1 decoded; a path that climbs above the root is refused.
//!
//! The result is idempotent: normalising it again changes nothing.

use std::borrow::Cow;

use gantry_manifest::EscapedSlashes;

/// Why a path was refused (each a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadPath {
    /// `..` segments climb above `/`.
    AboveRoot,
    /// `%2F`, `%5C` or `\` with `escaped_slashes = "reject"`.
    EscapedSlash,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    Nul,
}

impl BadPath {
    /// What the client sent wrong and what to send instead.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            BadPath::AboveRoot => "the path's `..` segments climb above `/`; send a path that stays under the root",
            BadPath::EscapedSlash => "the path contains an encoded slash or backslash (`%2F`, `%5C`) or a `\\`, which this gateway refuses (`[platform] escaped_slashes`); send `/` as a plain separator",
            BadPath::BadEscape => "the path has a `%` that is not followed by two hex digits; encode a literal `%` as `%25`",
            BadPath::Nul => "the path contains an encoded NUL (`%00`)",
        }
    }
}

/// Normalises an origin-form path (without the query). Borrows when nothing
/// changes, which is the common case. A path that does not start with `/`
/// (`*` of `OPTIONS *`) is returned as it is: no route can match it.
pub(crate) fn normalize(path: &str, escaped: EscapedSlashes) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') || is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, escaped)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)?))
}

/// True when no step would change `path`: no `%`, no `\`, no `//`, and no
/// `.` or `..` segment. One pass over the bytes.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' => {
                if i > 0 && is_dots(&bytes[segment_start..i]) {
                    return false;
                }
                if i > 0 && bytes[i - 1] == b'/' {
                    return false;
                }
                segment_start = i + 1;
            }
            _ => {}
        }
    }
    !is_dots(&bytes[segment_start..])
}

fn is_dots(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

/// Step 1 and 2: escapes decoded or normalised, slashes per the policy.
fn decode(path: &str, escaped: EscapedSlashes) -> Result<String, BadPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) else {
                    return Err(BadPath::BadEscape);
                };
                let value = high << 4 | low;
                match value {
                    0 => return Err(BadPath::Nul),
                    b'/' | b'\\' => match escaped {
                        EscapedSlashes::Reject => return Err(BadPath::EscapedSlash),
                        EscapedSlashes::Decode => out.push('/'),
                        EscapedSlashes::Keep => {
                            out.push_str(if value == b'/' { "%2F" } else { "%5C" })
                        }
                    },
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(HEX[(v >> 4) as usize] as char);
                        out.push(HEX[(v & 0xf) as usize] as char);
                    }
                }
                i += 3;
            }
            b'\\' => {
                match escaped {
                    EscapedSlashes::Reject => return Err(BadPath::EscapedSlash),
                    EscapedSlashes::Decode => out.push('/'),
                    EscapedSlashes::Keep => out.push_str("%5C"),
                }
                i += 1;
            }
            _ => {
                // Copy the run of ordinary bytes up to the next special one.
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\'))
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Steps 3 and 4 on a path that starts with `/`: empty segments merged, `.`
/// dropped, `..` removing the segment before it. A path that ends in `/`,
/// `/.` or `/..` keeps a trailing slash (as RFC 3986 §5.2.4 does).
fn remove_dot_segments(path: &str) -> Result<String, BadPath> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(BadPath::AboveRoot)?;
            }
            name => {
                kept.push(name);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Checks what must hold of every normalised path: it starts with `/`, has no
/// `//` and no `.` or `..` segment, and normalising it again changes nothing.
/// For the property test below and the fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn assert_normal_form(input: &str, escaped: EscapedSlashes) {
    let Ok(once) = normalize(input, escaped) else {
        return;
    };
    if !input.starts_with('/') {
        assert_eq!(&*once, input);
        return;
    }
    assert!(once.starts_with('/'), "{input:?} -> {once:?}");
    assert!(!once.contains("//"), "{input:?} -> {once:?}");
    assert!(
        once.split('/').all(|s| s != "." && s != ".."),
        "{input:?} -> {once:?}"
    );
    assert_eq!(
        normalize(&once, escaped).as_deref(),
        Ok(&*once),
        "{input:?} {escaped:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, BadPath> {
        normalize(path, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn ordinary_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/api/items",
            "/api/items/",
            "/a.b/c..d/.e",
            "/x/...",
            "*",
        ] {
            assert!(
                matches!(normalize(path, EscapedSlashes::Reject), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn every_spelling_of_admin_becomes_admin() {
        for path in [
            "/x/../admin/secret",
            "//admin/secret",
            "/%61dmin/secret",
            "/%61%64%6D%69%6E/secret",
            "/./admin/secret",
            "/admin/./secret",
            "/admin//secret",
            "///admin///secret",
            "/x/%2e%2e/admin/secret",
            "/x/%2E%2E/admin/secret",
            "/x/.%2e/admin/secret",
            "/%2e/admin/secret",
            "/x/y/../../admin/secret",
            "/admin/x/../secret",
        ] {
            assert_eq!(norm(path).as_deref(), Ok("/admin/secret"), "{path}");
        }
    }

    #[test]
    fn trailing_dots_and_slashes_follow_rfc_3986() {
        assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(norm("/a/b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/a/..").as_deref(), Ok("/"));
        assert_eq!(norm("//").as_deref(), Ok("/"));
        assert_eq!(norm("/a//").as_deref(), Ok("/a/"));
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for path in [
            "/..",
            "/../admin",
            "/a/../../admin",
            "/%2e%2e/admin",
            "/.%2E/x",
        ] {
            assert_eq!(norm(path), Err(BadPath::AboveRoot), "{path}");
        }
    }

    #[test]
    fn escaped_slashes_follow_the_policy() {
        for path in [
            "/admin%2Fsecret",
            "/admin%2fsecret",
            "/admin%5Csecret",
            "/admin\\secret",
        ] {
            assert_eq!(norm(path), Err(BadPath::EscapedSlash), "{path}");
            assert_eq!(
                normalize(path, EscapedSlashes::Decode).as_deref(),
                Ok("/admin/secret"),
                "{path}"
            );
        }
        assert_eq!(
            normalize("/a%2fb", EscapedSlashes::Keep).as_deref(),
            Ok("/a%2Fb")
        );
        assert_eq!(
            normalize("/x/..%2F..%2Fadmin", EscapedSlashes::Decode),
            Err(BadPath::AboveRoot)
        );
        assert_eq!(
            normalize("/x/y/..%2Fadmin", EscapedSlashes::Decode).as_deref(),
            Ok("/x/admin")
        );
    }

    #[test]
    fn other_escapes_stay_encoded_in_uppercase() {
        assert_eq!(norm("/a%20b/%c3%a9").as_deref(), Ok("/a%20b/%C3%A9"));
        assert_eq!(norm("/100%25").as_deref(), Ok("/100%25"));
        assert_eq!(
            norm("/%252e%252e/admin").as_deref(),
            Ok("/%252e%252e/admin")
        );
        assert_eq!(norm("/a%7eb").as_deref(), Ok("/a~b"));
    }

    #[test]
    fn malformed_escapes_and_nul_are_refused() {
        assert_eq!(norm("/a%"), Err(BadPath::BadEscape));
        assert_eq!(norm("/a%2"), Err(BadPath::BadEscape));
        assert_eq!(norm("/a%zz"), Err(BadPath::BadEscape));
        assert_eq!(norm("/a%00b"), Err(BadPath::Nul));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        let samples = [
            "/a/./b/../c//d/%2e/%41%2f%5c",
            "/%2e%2e%2f",
            "/x/.%2e/%7E/",
            "/a\\..\\b",
            "/%25%32%65",
        ];
        for escaped in [
            EscapedSlashes::Reject,
            EscapedSlashes::Keep,
            EscapedSlashes::Decode,
        ] {
            for path in samples {
                if let Ok(once) = normalize(path, escaped) {
                    let twice = normalize(&once, escaped).map(Cow::into_owned);
                    assert_eq!(twice.as_deref(), Ok(&*once), "{path} {escaped:?}");
                }
            }
        }
    }

    /// A property test over random paths built from the pieces attacks use:
    /// the result never keeps a dot segment or `//`, and is a fixed point.
    #[test]
    fn random_paths_normalise_to_fixed_points() {
        const PIECES: &[&str] = &[
            "/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "a", "admin", "%61",
            "%", "%0", "%00", "%25", "~", "%7e", ";", "%c3%a9",
        ];
        let mut rng = fastrand::Rng::with_seed(14);
        for _ in 0..20_000 {
            let mut path = String::from("/");
            for _ in 0..rng.usize(0..10) {
                path.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            for escaped in [
                EscapedSlashes::Reject,
                EscapedSlashes::Keep,
                EscapedSlashes::Decode,
            ] {
                assert_normal_form(&path, escaped);
            }
        }
    }
}
