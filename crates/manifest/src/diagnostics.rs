//! Manifest errors that point at the exact place in the file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A stable code for each kind of manifest mistake, documented in
/// `docs/manifest.md` so a user can look one up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The file is not valid TOML.
    Syntax,
    /// A key that Gantry does not know (usually a typo).
    UnknownKey,
    /// A value of the wrong type, e.g. a string where a number belongs.
    WrongType,
    /// A required key is missing.
    MissingKey,
    /// A duration that does not parse (`5s`, `250ms`, `1m 30s` do).
    BadDuration,
    /// A value of the right type that is not acceptable (an address, a method, a URL...).
    BadValue,
    /// Keys that cannot be used together, e.g. `urls` and `command`.
    Conflict,
    /// A route path pattern that is not well formed.
    BadPath,
    /// A route sends traffic to a service that is not declared.
    UnknownService,
    /// A route that can never match because an earlier route takes all its traffic.
    UnreachableRoute,
    /// A subscription reads a topic that is not declared.
    UnknownTopic,
    /// A route, subscription or schedule names a function that is not declared.
    UnknownFunction,
}

impl ErrorCode {
    /// The code shown in brackets, e.g. `error[M002]`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Syntax => "M001",
            ErrorCode::UnknownKey => "M002",
            ErrorCode::WrongType => "M003",
            ErrorCode::MissingKey => "M004",
            ErrorCode::BadDuration => "M005",
            ErrorCode::BadValue => "M006",
            ErrorCode::Conflict => "M007",
            ErrorCode::BadPath => "M008",
            ErrorCode::UnknownService => "M009",
            ErrorCode::UnreachableRoute => "M010",
            ErrorCode::UnknownTopic => "M011",
            ErrorCode::UnknownFunction => "M012",
        }
    }
}

/// One mistake in a manifest.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub code: ErrorCode,
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// 1-based line and column; `None` when the mistake has no single place
    /// (a missing table, say).
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The source line the location points into, for the caret display.
    snippet: Option<String>,
}

/// Every mistake found in one manifest, in file order.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    file: PathBuf,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Turns byte offsets into line/column and collects diagnostics.
pub(crate) struct DiagnosticSink<'a> {
    source: &'a str,
    line_starts: Vec<usize>,
    out: Diagnostics,
}

impl<'a> DiagnosticSink<'a> {
    pub(crate) fn new(source: &'a str, file: &Path) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        DiagnosticSink {
            source,
            line_starts,
            out: Diagnostics {
                file: file.to_path_buf(),
                items: Vec::new(),
            },
        }
    }

    pub(crate) fn push(
        &mut self,
        code: ErrorCode,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let (line, column, snippet) = match span {
            Some(span) => {
                let line_index = self
                    .line_starts
                    .partition_point(|&start| start <= span.start)
                    .saturating_sub(1);
                let line_start = self.line_starts[line_index];
                let line_end = self.source[line_start..]
                    .find('\n')
                    .map_or(self.source.len(), |i| line_start + i);
                let column = self.source[line_start..span.start.min(line_end)]
                    .chars()
                    .count()
                    + 1;
                let text = self.source[line_start..line_end].trim_end_matches('\r');
                (Some(line_index + 1), Some(column), Some(text.to_string()))
            }
            None => (None, None, None),
        };
        self.out.items.push(Diagnostic {
            code,
            message: message.into(),
            hint,
            line,
            column,
            snippet,
        });
    }

    pub(crate) fn finish(mut self) -> Diagnostics {
        // File order reads best; diagnostics without a place go last.
        self.out
            .items
            .sort_by_key(|d| (d.line.unwrap_or(usize::MAX), d.column.unwrap_or(0)));
        self.out
    }
}

impl Diagnostics {
    /// Adds a diagnostic found after decoding (cross-checks), located by span.
    pub(crate) fn push_at(
        &mut self,
        source: &str,
        code: ErrorCode,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let mut sink = DiagnosticSink::new(source, &self.file);
        sink.push(code, span, message, hint);
        self.items.extend(sink.out.items);
        self.items
            .sort_by_key(|d| (d.line.unwrap_or(usize::MAX), d.column.unwrap_or(0)));
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error[{}]: {}", self.code.as_str(), self.message)
    }
}

impl fmt::Display for Diagnostics {
    /// Renders like a compiler: `file:line:col: error[CODE]: message`, the
    /// offending line with a caret, then the hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (d.line, d.column) {
                (Some(line), Some(col)) => writeln!(f, "{file}:{line}:{col}: {d}")?,
                _ => writeln!(f, "{file}: {d}")?,
            }
            let gutter = d.line.map_or(1, |line| line.to_string().len());
            if let (Some(line), Some(col), Some(text)) = (d.line, d.column, &d.snippet) {
                writeln!(f, "{:gutter$} |", "")?;
                writeln!(f, "{line} | {text}")?;
                writeln!(f, "{:gutter$} | {:>col$}", "", "^")?;
            }
            if let Some(hint) = &d.hint {
                writeln!(f, "{:gutter$} = hint: {hint}", "")?;
            }
        }
        let n = self.items.len();
        write!(f, "\n{n} error{} in {file}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}
