//! The W3C `traceparent` an application puts in a sqlcommenter comment at the end of its SQL
//! (`SELECT 1 /*traceparent='00-<trace>-<span>-01'*/`), so the query's span joins its trace.

/// The caller's span, as the `traceparent` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id.
    pub trace_id: u128,
    /// 8-byte id of the caller's span.
    pub span_id: u64,
    /// The caller sampled its trace.
    pub sampled: bool,
}

/// Finds the `traceparent` in the last comment of `sql`, if that comment ends the text.
/// Cheap when there is none: it looks only at the end of the string.
#[must_use]
pub fn find(sql: &[u8]) -> Option<TraceParent> {
    let end = sql.len()
        - sql
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace() || **b == b';' || **b == 0)
            .count();
    let sql = &sql[..end];
    let body = sql.strip_suffix(b"*/")?;
    let open = body.windows(2).rposition(|w| w == b"/*")?;
    let comment = &body[open + 2..];
    comment.split(|&b| b == b',').find_map(|pair| {
        let pair = pair.trim_ascii();
        let value = pair.strip_prefix(b"traceparent=")?;
        let value = value.strip_prefix(b"'")?.strip_suffix(b"'")?;
        parse(value)
    })
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>`; other versions are read by the same layout, as the
/// W3C spec asks, except the invalid `ff`. All-zero ids are invalid.
fn parse(value: &[u8]) -> Option<TraceParent> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version.eq_ignore_ascii_case("ff")
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|&id| id != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|&id| id != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const SPAN: &str = "b7ad6b7169203331";

    #[test]
    fn reads_the_trailing_sqlcommenter_comment() {
        let sql = format!(
            "SELECT 1 /*action='run',traceparent='00-{TRACE}-{SPAN}-01',tracestate='x=1'*/;\n"
        );
        let parent = find(sql.as_bytes()).unwrap();
        assert_eq!(parent.trace_id, 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c);
        assert_eq!(parent.span_id, 0xb7ad_6b71_6920_3331);
        assert!(parent.sampled);
        let unsampled = format!("SELECT 1 /*traceparent='00-{TRACE}-{SPAN}-00'*/");
        assert!(!find(unsampled.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn ignores_what_is_not_a_valid_trailing_traceparent() {
        let zero_trace = format!("SELECT 1 /*traceparent='00-{}-{SPAN}-01'*/", "0".repeat(32));
        let upper = format!(
            "SELECT 1 /*traceparent='00-{}-{SPAN}-01'*/",
            TRACE.to_uppercase()
        );
        let not_last = format!("SELECT 1 /*traceparent='00-{TRACE}-{SPAN}-01'*/ FROM t");
        let bad_version = format!("SELECT 1 /*traceparent='ff-{TRACE}-{SPAN}-01'*/");
        for sql in [
            "SELECT 1",
            "SELECT 1 */",
            "SELECT '/*traceparent=1*/'",
            zero_trace.as_str(),
            upper.as_str(),
            not_last.as_str(),
            bad_version.as_str(),
        ] {
            assert_eq!(find(sql.as_bytes()), None, "{sql}");
        }
    }
}
