//! Templates in workflow steps: `{{ input.order_id }}`,
//! `{{ steps.reserve.output.id }}`, `{{ workflow.id }}`.
//!
//! A string that is exactly one template becomes the referenced JSON value
//! (a number stays a number); a string with text around templates becomes
//! text. Parsing happens when the manifest is checked, so a typo in a
//! reference is an error with its line, not a surprise at run time.

/// One piece of a template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Ref(Reference),
}

/// What a `{{ ... }}` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub root: Root,
    /// Fields (or array indexes) below the root.
    pub path: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The workflow's input.
    Input,
    /// The output of an earlier step.
    Step(String),
    /// `workflow.id`.
    WorkflowId,
}

/// Splits a string into text and references.
pub fn parse(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`{text}` opens `{{{{` without closing `}}}}`"))?;
        pieces.push(Piece::Ref(reference(after[..end].trim())?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

fn reference(expr: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = expr.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{{{{ {expr} }}}}` is not a reference"));
    }
    match parts.as_slice() {
        ["input", path @ ..] => Ok(Reference {
            root: Root::Input,
            path: path.iter().map(|s| s.to_string()).collect(),
        }),
        ["workflow", "id"] => Ok(Reference {
            root: Root::WorkflowId,
            path: Vec::new(),
        }),
        ["steps", name, "output", path @ ..] => Ok(Reference {
            root: Root::Step(name.to_string()),
            path: path.iter().map(|s| s.to_string()).collect(),
        }),
        ["steps", name, ..] => Err(format!(
            "`{{{{ {expr} }}}}`: a step is read through its output, e.g. `{{{{ steps.{name}.output.id }}}}`"
        )),
        _ => Err(format!(
            "`{{{{ {expr} }}}}` is not a reference: use `input.FIELD`, `steps.STEP.output.FIELD` or `workflow.id`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_text_and_references() {
        let pieces =
            parse("/reservations/{{ steps.reserve.output.id }}?o={{input.order_id}}").unwrap();
        assert_eq!(pieces.len(), 4);
        assert_eq!(
            pieces[1],
            Piece::Ref(Reference {
                root: Root::Step("reserve".into()),
                path: vec!["id".into()]
            })
        );
        assert_eq!(parse("plain").unwrap(), vec![Piece::Text("plain".into())]);
    }

    #[test]
    fn mistakes_say_what_is_allowed() {
        assert!(parse("{{ input.x").unwrap_err().contains("without closing"));
        assert!(parse("{{ steps.reserve.id }}")
            .unwrap_err()
            .contains("steps.reserve.output.id"));
        assert!(parse("{{ env.HOME }}").unwrap_err().contains("input.FIELD"));
        assert!(parse("{{ input..x }}")
            .unwrap_err()
            .contains("not a reference"));
    }
}
