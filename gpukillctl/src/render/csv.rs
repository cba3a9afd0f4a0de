//! CSV for the reports (`audit`, `history`): RFC 4180, a header row, `\n` line ends, and an
//! empty field for an absent value.

/// `header` and `rows` as CSV, ending in a newline.
pub fn csv(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut text = String::new();
    push_record(&mut text, header.iter().copied());
    for row in rows {
        push_record(&mut text, row.iter().map(String::as_str));
    }
    text
}

/// `value` as text, or an empty field when absent.
pub fn or_empty<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(String::new, |value| value.to_string())
}

fn push_record<'a>(text: &mut String, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            text.push(',');
        }
        push_field(text, field);
    }
    text.push('\n');
}

/// One field, quoted (quotes doubled) when it holds a comma, a quote or a line break.
fn push_field(text: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        text.push('"');
        text.push_str(&field.replace('"', "\"\""));
        text.push('"');
    } else {
        text.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_or_line_breaks_are_quoted() {
        let rows = vec![vec![
            "plain".to_owned(),
            "a,b".to_owned(),
            "say \"hi\"".to_owned(),
            "two\nlines".to_owned(),
            String::new(),
        ]];
        assert_eq!(
            csv(&["A", "B", "C", "D", "E"], rows.into_iter()),
            "A,B,C,D,E\nplain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\n"
        );
        assert_eq!(or_empty(None::<u32>), "");
        assert_eq!(or_empty(Some(2.5)), "2.5");
    }
}
