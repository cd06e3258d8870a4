//! Column references in the expressions of an expand/contract migration, rewritten with
//! PostgreSQL's own scanner: an `up` written over the old version's names becomes an
//! expression over the trigger's `NEW` row, a `check` over the new names one over the physical
//! columns.

use std::collections::BTreeMap;

use pg_query::protobuf::{KeywordKind, Token};

/// `expr` with each column reference found in `columns` replaced by its mapped text. A name
/// right after `.` or `::`, or right before `(`, is not a column reference and stays.
///
/// # Errors
/// The scanner's message when `expr` cannot be scanned.
pub fn bind(expr: &str, columns: &BTreeMap<String, String>) -> Result<String, String> {
    let tokens = pg_query::scan_tokens(expr).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(expr.len() * 2);
    let mut copied = 0;
    for (i, token) in tokens.iter().enumerate() {
        let (Ok(start), Ok(end)) = (usize::try_from(token.start), usize::try_from(token.end))
        else {
            continue;
        };
        let is_name = token.token == Token::Ident as i32
            || token.keyword_kind == KeywordKind::UnreservedKeyword as i32
            || token.keyword_kind == KeywordKind::ColNameKeyword as i32;
        if !is_name {
            continue;
        }
        let before = i
            .checked_sub(1)
            .map(|j| tokens[j].token)
            .is_some_and(|t| t == Token::Typecast as i32 || t == Token::Ascii46 as i32);
        let after = tokens
            .get(i + 1)
            .is_some_and(|t| t.token == Token::Ascii40 as i32);
        if before || after {
            continue;
        }
        let text = &expr[start..end];
        let name = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(quoted) => quoted.to_owned(),
            None => text.to_ascii_lowercase(),
        };
        if let Some(replacement) = columns.get(&name) {
            out.push_str(&expr[copied..start]);
            out.push_str(replacement);
            copied = end;
        }
    }
    out.push_str(&expr[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn column_references_are_bound_to_the_row() {
        let columns = map(&[("amount", "NEW.\"amount\""), ("name", "NEW.\"name\"")]);
        assert_eq!(
            bind("amount::bigint * 100 + length(name)", &columns).unwrap(),
            "NEW.\"amount\"::bigint * 100 + length(NEW.\"name\")"
        );
    }

    #[test]
    fn quoted_names_count_and_strings_do_not() {
        let columns = map(&[("amount", "r.a")]);
        assert_eq!(
            bind("\"amount\" || 'amount'", &columns).unwrap(),
            "r.a || 'amount'"
        );
    }

    #[test]
    fn types_functions_and_qualified_names_stay() {
        let columns = map(&[("text", "X"), ("lower", "Y"), ("b", "Z")]);
        assert_eq!(
            bind("lower(a.b::text)", &columns).unwrap(),
            "lower(a.b::text)"
        );
    }
}
