//! Composite alarm rules (`ALARM("a") AND NOT OK(b) OR TRUE`…): parsing the CloudWatch rule
//! syntax and evaluating it against the states of the alarms it names. Knows nothing of the
//! running state beyond a lookup function, and nothing of HTTP.

use crate::world::AlarmState;

/// A parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rule {
    Const(bool),
    /// `ALARM(name)`, `OK(name)`, `INSUFFICIENT_DATA(name)`: true while `name` is in that state.
    Is(AlarmState, String),
    Not(Box<Rule>),
    And(Box<Rule>, Box<Rule>),
    Or(Box<Rule>, Box<Rule>),
}

impl Rule {
    /// Parse a rule; None when it is not in the syntax the simulator understands.
    pub(crate) fn parse(text: &str) -> Option<Rule> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, at: 0 };
        let rule = parser.or()?;
        (parser.at == parser.tokens.len()).then_some(rule)
    }

    /// The alarm names the rule refers to (ARNs reduced to names).
    pub(crate) fn children(&self) -> Vec<&str> {
        match self {
            Rule::Const(_) => vec![],
            Rule::Is(_, name) => vec![name.as_str()],
            Rule::Not(inner) => inner.children(),
            Rule::And(a, b) | Rule::Or(a, b) => {
                let mut out = a.children();
                out.extend(b.children());
                out
            }
        }
    }

    /// Evaluate with `state_of` (None for an alarm that does not exist: its test is false).
    pub(crate) fn eval(&self, state_of: &dyn Fn(&str) -> Option<AlarmState>) -> bool {
        match self {
            Rule::Const(value) => *value,
            Rule::Is(state, name) => state_of(name) == Some(*state),
            Rule::Not(inner) => !inner.eval(state_of),
            Rule::And(a, b) => a.eval(state_of) && b.eval(state_of),
            Rule::Or(a, b) => a.eval(state_of) || b.eval(state_of),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    /// The argument of a state function, as written between its parentheses.
    Name(String),
}

fn tokenize(text: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(c) = rest.chars().next() {
        if c == '(' {
            // A state function's parentheses hold a name, not an expression.
            if matches!(tokens.last(), Some(Token::Word(w)) if state_function(w).is_some()) {
                let close = rest.find(')')?;
                let name = rest[1..close].trim().trim_matches('"').trim();
                tokens.push(Token::Name(alarm_name(name).to_owned()));
                rest = &rest[close + 1..];
            } else {
                tokens.push(Token::Open);
                rest = &rest[1..];
            }
        } else if c == ')' {
            tokens.push(Token::Close);
            rest = &rest[1..];
        } else if c.is_ascii_alphabetic() || c == '_' {
            let end = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len());
            tokens.push(Token::Word(rest[..end].to_ascii_uppercase()));
            rest = &rest[end..];
        } else {
            return None;
        }
        rest = rest.trim_start();
    }
    Some(tokens)
}

/// `arn:aws:cloudwatch:R:A:alarm:NAME` → `NAME`; a name stays as it is.
fn alarm_name(text: &str) -> &str {
    text.split_once(":alarm:").map_or(text, |(_, name)| name)
}

fn state_function(word: &str) -> Option<AlarmState> {
    match word {
        "ALARM" => Some(AlarmState::Alarm),
        "OK" => Some(AlarmState::Ok),
        "INSUFFICIENT_DATA" => Some(AlarmState::InsufficientData),
        _ => None,
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w == word)
    }

    fn or(&mut self) -> Option<Rule> {
        let mut rule = self.and()?;
        while self.peek_word("OR") {
            self.at += 1;
            rule = Rule::Or(Box::new(rule), Box::new(self.and()?));
        }
        Some(rule)
    }

    fn and(&mut self) -> Option<Rule> {
        let mut rule = self.factor()?;
        while self.peek_word("AND") {
            self.at += 1;
            rule = Rule::And(Box::new(rule), Box::new(self.factor()?));
        }
        Some(rule)
    }

    fn factor(&mut self) -> Option<Rule> {
        let token = self.tokens.get(self.at)?.clone();
        self.at += 1;
        match token {
            Token::Open => {
                let rule = self.or()?;
                (self.tokens.get(self.at) == Some(&Token::Close)).then(|| {
                    self.at += 1;
                    rule
                })
            }
            Token::Word(word) => match word.as_str() {
                "NOT" => Some(Rule::Not(Box::new(self.factor()?))),
                "TRUE" => Some(Rule::Const(true)),
                "FALSE" => Some(Rule::Const(false)),
                other => {
                    let state = state_function(other)?;
                    let Some(Token::Name(name)) = self.tokens.get(self.at).cloned() else {
                        return None;
                    };
                    self.at += 1;
                    Some(Rule::Is(state, name))
                }
            },
            Token::Close | Token::Name(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(name: &str) -> Option<AlarmState> {
        match name {
            "a" => Some(AlarmState::Alarm),
            "b" => Some(AlarmState::Ok),
            "c" => Some(AlarmState::InsufficientData),
            _ => None,
        }
    }

    #[test]
    fn rules_parse_and_evaluate_with_cloudwatch_precedence() {
        let cases = [
            (r#"ALARM("a")"#, true),
            ("ALARM(b)", false),
            ("ALARM(a) AND OK(b)", true),
            ("ALARM(b) OR ALARM(a) AND OK(b)", true),
            ("(ALARM(b) OR ALARM(a)) AND NOT OK(b)", false),
            ("NOT INSUFFICIENT_DATA(c) OR FALSE", false),
            ("TRUE", true),
            (
                "ALARM(arn:aws:cloudwatch:eu-west-1:111111111111:alarm:a)",
                true,
            ),
            ("ALARM(missing)", false),
        ];
        for (text, want) in cases {
            let rule = Rule::parse(text).unwrap_or_else(|| panic!("{text} parses"));
            assert_eq!(rule.eval(&states), want, "{text}");
        }
        assert_eq!(
            Rule::parse("ALARM(a) OR OK(b)").unwrap().children(),
            ["a", "b"]
        );
    }

    #[test]
    fn what_is_not_a_rule_is_refused() {
        for text in [
            "",
            "ALARM",
            "ALARM(a) AND",
            "(TRUE",
            "MAYBE(a)",
            "TRUE TRUE",
            "a > 1",
        ] {
            assert_eq!(Rule::parse(text), None, "{text}");
        }
    }
}
