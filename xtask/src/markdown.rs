//! Renders the small Markdown subset the README's reference sections use into roff, for man
//! pages: `##`/`###` headings, paragraphs, `- ` lists, fenced code blocks, pipe tables, and inline
//! `code`, **bold** and [links](url); one-line HTML comments are skipped. Owns nothing else; anything it does not know is an error,
//! so a README edit cannot silently break the man page.

use anyhow::{Result, bail};
use roff::{Inline, Roff, bold, roman};

/// Appends `markdown` to `page`.
pub fn render(markdown: &str, page: &mut Roff) -> Result<()> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() || (line.starts_with("<!--") && line.ends_with("-->")) {
            i += 1;
        } else if let Some(title) = line.strip_prefix("## ") {
            page.control("SH", [title.to_uppercase().as_str()]);
            i += 1;
        } else if let Some(title) = line.strip_prefix("### ") {
            page.control("SS", [title]);
            i += 1;
        } else if line.starts_with("```") {
            i = code_block(&lines, i, page)?;
        } else if line.starts_with('|') {
            i = table(&lines, i, page)?;
        } else if line.starts_with("- ") {
            i = list_item(&lines, i, page)?;
        } else if line.starts_with('#') || line.starts_with('<') || line.starts_with('>') {
            bail!(
                "line {}: unsupported Markdown for a man page: {line}",
                i + 1
            );
        } else {
            let end = paragraph_end(&lines, i);
            page.control("PP", []);
            page.text(inline(&lines[i..end].join(" "))?);
            i = end;
        }
    }
    Ok(())
}

/// The index after the paragraph that starts at `start`: up to a blank line or another block.
fn paragraph_end(lines: &[&str], start: usize) -> usize {
    let mut end = start + 1;
    while end < lines.len() {
        let line = lines[end];
        let block = line.starts_with("```") || line.starts_with('|') || line.starts_with("- ");
        if line.trim().is_empty() || block || line.starts_with('#') {
            break;
        }
        end += 1;
    }
    end
}

/// A `- ` item and its indented continuation lines, as a bulleted indented paragraph.
fn list_item(lines: &[&str], start: usize, page: &mut Roff) -> Result<usize> {
    let mut text = vec![lines[start].trim_start_matches("- ").to_owned()];
    let mut end = start + 1;
    while end < lines.len() && lines[end].starts_with("  ") {
        text.push(lines[end].trim().to_owned());
        end += 1;
    }
    page.control("IP", ["\\(bu", "2"]);
    page.text(inline(&text.join(" "))?);
    Ok(end)
}

/// A fenced block, verbatim and indented, without filling.
fn code_block(lines: &[&str], start: usize, page: &mut Roff) -> Result<usize> {
    let Some(len) = lines[start + 1..]
        .iter()
        .position(|line| line.starts_with("```"))
    else {
        bail!("line {}: code block never closed", start + 1);
    };
    page.control("PP", [])
        .control("RS", ["4"])
        .control("nf", []);
    for line in &lines[start + 1..start + 1 + len] {
        page.text([roman(*line)]);
    }
    page.control("fi", []).control("RE", []);
    Ok(start + len + 2)
}

/// A pipe table with a header row: each row becomes a tagged paragraph, its first cell the tag
/// and the others joined after it (`Default: x.` for a column headed "Default").
fn table(lines: &[&str], start: usize, page: &mut Roff) -> Result<usize> {
    let rows: Vec<Vec<String>> = lines[start..]
        .iter()
        .take_while(|line| line.starts_with('|'))
        .map(|line| cells(line))
        .collect();
    let end = start + rows.len();
    let [header, separator, body @ ..] = rows.as_slice() else {
        bail!(
            "line {}: a table needs a header and a separator row",
            start + 1
        );
    };
    if !separator
        .iter()
        .all(|cell| !cell.is_empty() && cell.chars().all(|c| "-: ".contains(c)))
    {
        bail!(
            "line {}: the second row of a table must be its separator",
            start + 2
        );
    }
    for row in body {
        if row.len() != header.len() {
            bail!(
                "table at line {}: a row has {} cells, the header {}",
                start + 1,
                row.len(),
                header.len()
            );
        }
        page.control("TP", []);
        page.text(inline(&row[0])?);
        let mut text = String::new();
        for (name, cell) in header.iter().zip(row).skip(1) {
            match (name.as_str(), cell.as_str()) {
                (_, "" | "—") => {}
                ("Default", "required") => text.push_str("Required. "),
                ("Default", value) => text.push_str(&format!("Default: {value}. ")),
                (_, value) => text.push_str(&format!("{value} ")),
            }
        }
        page.text(inline(text.trim_end())?);
    }
    Ok(end)
}

/// The cells of `| a | b |`, trimmed.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .split('|')
        .map(|cell| cell.trim().to_owned())
        .collect()
}

/// Inline Markdown to roff: `code` and **strong** in bold, a link as its text.
fn inline(text: &str) -> Result<Vec<Inline>> {
    let mut out = Vec::new();
    let mut plain = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let (marker, close) = match c {
            '`' => ("`", "`"),
            '*' if rest.starts_with("**") => ("**", "**"),
            '[' => ("[", "]("),
            _ => {
                plain.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
        };
        let body = &rest[marker.len()..];
        let Some(len) = body.find(close) else {
            bail!("unclosed `{marker}` in: {text}")
        };
        if !plain.is_empty() {
            out.push(roman(std::mem::take(&mut plain)));
        }
        rest = &body[len + close.len()..];
        if marker == "[" {
            // The link text may itself be `code`; the URL after it is dropped.
            out.extend(inline(&body[..len])?);
            let Some(url_end) = rest.find(')') else {
                bail!("unclosed link in: {text}")
            };
            rest = &rest[url_end + 1..];
        } else {
            out.push(bold(&body[..len]));
        }
    }
    if !plain.is_empty() {
        out.push(roman(plain));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_roff(markdown: &str) -> String {
        let mut page = Roff::new();
        render(markdown, &mut page).expect("renders");
        page.to_roff()
    }

    #[test]
    fn a_table_row_becomes_a_tagged_paragraph_with_its_default() {
        let roff = to_roff(
            "| Key | Default | Meaning |\n| --- | --- | --- |\n| `a.b` | `10s` | At least `1s`. |\n",
        );
        assert_eq!(
            roff,
            ".TP\n\\fBa.b\\fR\nDefault: \\fB10s\\fR. At least \\fB1s\\fR.\n"
        );
    }

    #[test]
    fn paragraphs_lists_code_and_links() {
        let roff =
            to_roff("See [`x.yaml`](x.yaml) **now**.\n\n- one\n  more\n\n```sh\n.hidden\n```\n");
        assert_eq!(
            roff,
            ".PP\nSee \\fBx.yaml\\fR \\fBnow\\fR.\n.IP \\(bu 2\none more\n.PP\n.RS 4\n.nf\n\\&.hidden\n.fi\n.RE\n"
        );
    }

    #[test]
    fn unknown_markdown_is_an_error() {
        let mut page = Roff::new();
        assert!(render("> a quote", &mut page).is_err());
        assert!(render("an `unclosed span", &mut page).is_err());
    }
}
