//! Route path patterns: `/exact`, `/prefix/*` and `/users/{id}` segments.

use std::fmt;

/// One `/`-separated piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed route path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    /// Ends in `/*`: matches the segments so far followed by anything.
    prefix: bool,
    raw: String,
}

/// The result of matching a request path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathMatch<'p> {
    /// `{param}` captures, in pattern order.
    pub params: Vec<(&'p str, &'p str)>,
    /// For a prefix pattern, what follows the matched prefix, starting with `/`
    /// (or empty when the path is exactly the prefix).
    pub rest: &'p str,
}

/// Why a literal segment could never equal a normalised request path's
/// segment: an escape of an unreserved character (requests have it decoded),
/// lowercase hex (requests have it uppercase), or a malformed `%`.
fn not_normal_escape(part: &str) -> Option<&'static str> {
    let bytes = part.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                return Some("has a `%` without two hex digits; write `%25` for a literal `%`");
            };
            if bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase) {
                return Some("must write escapes in uppercase hex (`%2F`, not `%2f`), as requests are normalised");
            }
            let value = (high * 16 + low) as u8;
            if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                return Some("escapes a character that needs none; write it plainly (requests have it decoded)");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}

impl PathPattern {
    /// Parses a pattern, or says what is wrong with it.
    pub fn parse(raw: &str) -> Result<PathPattern, String> {
        let Some(body) = raw.strip_prefix('/') else {
            return Err(format!("path `{raw}` must start with `/`"));
        };
        let (body, prefix) = match body.strip_suffix('*') {
            Some(b) if b.is_empty() || b.ends_with('/') => (b.trim_end_matches('/'), true),
            Some(_) => {
                return Err(format!(
                    "`*` in `{raw}` must be a whole last segment, as in `/api/*`"
                ))
            }
            None => (body, false),
        };
        let mut segments = Vec::new();
        if !body.is_empty() {
            let parts: Vec<&str> = body.split('/').collect();
            let last = parts.len() - 1;
            for (i, part) in parts.into_iter().enumerate() {
                if part.contains('*') {
                    return Err(format!(
                        "`*` in `{raw}` may only be the last segment, as in `/api/*`"
                    ));
                }
                if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    let valid = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        return Err(format!(
                            "parameter `{{{name}}}` in `{raw}` needs a name of letters, digits or `_`"
                        ));
                    }
                    if segments
                        .iter()
                        .any(|s| matches!(s, Segment::Param(n) if n == name))
                    {
                        return Err(format!("parameter `{{{name}}}` appears twice in `{raw}`"));
                    }
                    segments.push(Segment::Param(name.to_string()));
                } else if part.contains('{') || part.contains('}') {
                    return Err(format!(
                        "`{part}` in `{raw}`: a parameter must be a whole segment, as in `/users/{{id}}`"
                    ));
                } else if part.is_empty() && i != last {
                    return Err(format!("`{raw}` has an empty segment (`//`)"));
                } else if part == "." || part == ".." {
                    return Err(format!(
                        "`{raw}` has a `{part}` segment, which no request path has once the gateway normalises it"
                    ));
                } else if let Some(why) = not_normal_escape(part) {
                    return Err(format!("`{part}` in `{raw}` {why}"));
                } else {
                    segments.push(Segment::Literal(part.to_string()));
                }
            }
        }
        Ok(PathPattern {
            segments,
            prefix,
            raw: raw.to_string(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether a `{name}` parameter is captured by this pattern.
    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(n) if n == name))
    }

    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Matches a request path (without query). Allocates only to hold captures.
    pub fn matches<'p>(&'p self, path: &'p str) -> Option<PathMatch<'p>> {
        let mut rest = path.strip_prefix('/')?;
        let mut params = Vec::new();
        let last = self.segments.len().checked_sub(1);
        for (i, segment) in self.segments.iter().enumerate() {
            let (piece, after) = rest.find('/').map_or((rest, ""), |end| rest.split_at(end));
            match segment {
                Segment::Literal(lit) if lit == piece => {}
                Segment::Param(name) if !piece.is_empty() => params.push((name.as_str(), piece)),
                _ => return None,
            }
            if Some(i) == last {
                // An exact pattern also takes one trailing slash: most
                // upstream frameworks serve `/admin/` as `/admin`, so it must
                // meet `/admin`'s policies, not fall through to a catch-all.
                let exact = after.is_empty() || after == "/";
                return (self.prefix || exact).then_some(PathMatch {
                    params,
                    rest: after,
                });
            }
            // More pattern segments follow, so the path must go on.
            rest = after.strip_prefix('/')?;
        }
        // A pattern without segments: `/` or `/*`.
        if self.prefix {
            Some(PathMatch { params, rest: path })
        } else {
            rest.is_empty().then_some(PathMatch { params, rest: "" })
        }
    }

    /// Whether every path this pattern matches is also matched by `self`.
    pub fn covers(&self, other: &PathPattern) -> bool {
        let n = self.segments.len();
        if self.prefix {
            if other.segments.len() < n {
                return false;
            }
        } else if other.prefix || other.segments.len() != n {
            return false;
        }
        self.segments
            .iter()
            .zip(&other.segments)
            .all(|(mine, theirs)| match (mine, theirs) {
                (Segment::Param(_), _) => true,
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                (Segment::Literal(_), Segment::Param(_)) => false,
            })
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_paths_match_only_themselves() {
        assert!(p("/health").matches("/health").is_some());
        assert!(p("/health").matches("/health/x").is_none());
        assert!(
            p("/health").matches("/health/").is_some(),
            "one trailing slash"
        );
        assert!(p("/health").matches("/health//").is_none());
        assert!(p("/users/{id}").matches("/users/7/").is_some());
        assert!(p("/health").matches("/healthz").is_none());
        assert!(p("/").matches("/").is_some());
        assert!(p("/").matches("/a").is_none());
    }

    #[test]
    fn prefix_paths_match_their_root_and_below() {
        let pat = p("/api/catalog/*");
        assert_eq!(
            pat.matches("/api/catalog/items/1").unwrap().rest,
            "/items/1"
        );
        assert_eq!(pat.matches("/api/catalog/").unwrap().rest, "/");
        assert_eq!(pat.matches("/api/catalog").unwrap().rest, "");
        assert!(pat.matches("/api/catalogue").is_none());
        assert!(pat.matches("/api").is_none());
        assert_eq!(
            p("/*").matches("/anything/at/all").unwrap().rest,
            "/anything/at/all"
        );
    }

    #[test]
    fn params_capture_one_segment() {
        let pat = p("/users/{id}/orders");
        let m = pat.matches("/users/42/orders").unwrap();
        assert_eq!(m.params, vec![("id", "42")]);
        assert!(pat.matches("/users//orders").is_none());
        assert!(pat.matches("/users/42").is_none());
        assert!(pat.matches("/users/42/orders/7").is_none());
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(PathPattern::parse("api")
            .unwrap_err()
            .contains("start with `/`"));
        assert!(PathPattern::parse("/a/*/b")
            .unwrap_err()
            .contains("last segment"));
        assert!(PathPattern::parse("/a*")
            .unwrap_err()
            .contains("whole last segment"));
        assert!(PathPattern::parse("/u/{}")
            .unwrap_err()
            .contains("needs a name"));
        assert!(PathPattern::parse("/u/x{id}")
            .unwrap_err()
            .contains("whole segment"));
        assert!(PathPattern::parse("/a/../b")
            .unwrap_err()
            .contains("`..` segment"));
        assert!(PathPattern::parse("/%7Euser/*")
            .unwrap_err()
            .contains("needs none"));
        assert!(PathPattern::parse("/a%2fb")
            .unwrap_err()
            .contains("uppercase"));
        assert!(PathPattern::parse("/100%")
            .unwrap_err()
            .contains("two hex digits"));
        assert!(PathPattern::parse("/a%20b").is_ok());
        assert!(PathPattern::parse("/a//b")
            .unwrap_err()
            .contains("empty segment"));
    }

    #[test]
    fn coverage_is_by_shape() {
        assert!(p("/*").covers(&p("/api/x")));
        assert!(p("/api/*").covers(&p("/api")));
        assert!(p("/api/*").covers(&p("/api/v1/*")));
        assert!(!p("/api/v1/*").covers(&p("/api/*")));
        assert!(p("/users/{id}").covers(&p("/users/me")));
        assert!(!p("/users/me").covers(&p("/users/{id}")));
        assert!(!p("/a").covers(&p("/a/*")));
    }
}
