//! From query text to [`Query`]: sqlparser reads the SQL, and this module keeps the small part
//! of its AST the query language has, refusing everything else with a positioned error.

use sqlparser::ast::{
    self as sql, AccessExpr, BinaryOperator, GroupByExpr, InTarget, LimitClause, ObjectNamePart,
    OrderByKind, OrderBySort, SelectFlavor, SelectItem, SetExpr, Spanned, Statement, Subscript,
    TableFactor, UnaryOperator,
};
use sqlparser::dialect::Dialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer};

use crate::ast::{CompareOp, Direction, Expr, Literal, OrderKey, Path, Projection, Query, Segment};
use crate::error::{Position, QueryError};
use crate::like::LikePattern;

/// Bounds on a query's size, so that hostile text cannot exhaust the stack or the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest query text, in bytes.
    pub max_query_bytes: usize,
    /// Deepest nesting of brackets, `NOT`, and `AND` inside `OR` inside `AND`….
    pub max_depth: usize,
    /// Most conditions, `IN` list items, selected paths and ORDER BY keys, all counted together.
    pub max_terms: usize,
    /// Most tokens (words, literals, operators, brackets; not spaces or comments). This bounds
    /// how deep a chain like `1 + 1 + …` can make sqlparser's tree before anything walks it.
    pub max_tokens: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_query_bytes: 16 * 1024, max_depth: 16, max_terms: 1024, max_tokens: 4096 }
    }
}

/// The SQL that Concord reads: ANSI identifiers (letters, digits, `_`; `"quoted"` for any
/// other key), single-quoted strings, and none of the vendor extensions.
#[derive(Debug)]
struct ConcordDialect;

impl Dialect for ConcordDialect {
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_ascii_alphabetic() || ch == '_'
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_ascii_alphanumeric() || ch == '_'
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '"'
    }

    fn identifier_quote_style(&self, _identifier: &str) -> Option<char> {
        Some('"')
    }
}

/// Whether `word` is an SQL keyword, so that a key spelled like it must be quoted.
pub(crate) fn is_reserved_word(word: &str) -> bool {
    let upper = word.to_ascii_uppercase();
    sqlparser::keywords::ALL_KEYWORDS.binary_search(&upper.as_str()).is_ok()
}

impl Query {
    /// Parses a query with the default [`Limits`].
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        Query::parse_with_limits(text, &Limits::default())
    }

    /// Parses a query, refusing any past `limits`.
    pub fn parse_with_limits(text: &str, limits: &Limits) -> Result<Query, QueryError> {
        let scan = scan(text, limits)?;
        let statements = parser(limits)
            .with_tokens_with_locations(scan.tokens)
            .parse_statements()
            .map_err(|e| from_parser_error(e, limits))?;
        let mut converter = Converter { limits, terms: 0 };
        match statements.as_slice() {
            [Statement::Query(query)] => converter.query(query),
            [] => Err(QueryError::Syntax {
                message: "expected a SELECT query".into(),
                position: None,
            }),
            [_] => Err(QueryError::Unsupported {
                message: "only SELECT queries are supported".into(),
                position: scan.first,
            }),
            [_, ..] => Err(QueryError::Unsupported {
                message: "only one query at a time".into(),
                position: scan.semicolon,
            }),
        }
    }
}

impl Path {
    /// Parses a path as the query language writes it: `a.b[0]."key with spaces"`.
    pub fn parse(text: &str) -> Result<Path, QueryError> {
        let limits = Limits::default();
        let scan = scan(text, &limits)?;
        let mut parser = parser(&limits).with_tokens_with_locations(scan.tokens);
        let expr = parser.parse_expr().map_err(|e| from_parser_error(e, &limits))?;
        let rest = parser.peek_token();
        if rest.token != Token::EOF {
            return Err(QueryError::Syntax {
                message: format!("unexpected {} after the path", rest.token),
                position: position(rest.span),
            });
        }
        let mut converter = Converter { limits: &limits, terms: 0 };
        converter.path(&expr)
    }
}

/// The query's tokens, checked against the limits before sqlparser builds anything.
struct Scan {
    tokens: Vec<TokenWithSpan>,
    /// Where the first token is.
    first: Option<Position>,
    /// Where the first `;` is.
    semicolon: Option<Position>,
}

fn scan(text: &str, limits: &Limits) -> Result<Scan, QueryError> {
    if text.len() > limits.max_query_bytes {
        return Err(QueryError::TooLong { len: text.len(), max: limits.max_query_bytes });
    }
    let tokens = Tokenizer::new(&ConcordDialect, text)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| QueryError::Syntax {
            message: e.message,
            position: position(Span::new(e.location, e.location)),
        })?;
    let significant = tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_)));
    let first = significant.clone().next().and_then(|t| position(t.span));
    let semicolon =
        significant.clone().find(|t| t.token == Token::SemiColon).and_then(|t| position(t.span));
    if significant.clone().nth(limits.max_tokens).is_some() {
        return Err(QueryError::TooManyTokens { max: limits.max_tokens });
    }
    // Brackets and prefix operators are what make sqlparser recurse. Its own limit catches
    // them too, but some of its look-ahead turns that into a misleading syntax error; counted
    // here, the error says what is wrong and where.
    let (mut brackets, mut prefixes) = (0usize, 0usize);
    for token in significant {
        match &token.token {
            Token::LParen | Token::LBracket => brackets += 1,
            Token::RParen | Token::RBracket => {
                brackets = brackets.saturating_sub(1);
                prefixes = 0;
            }
            Token::Word(w) if w.keyword == Keyword::NOT => prefixes += 1,
            Token::Minus | Token::Plus => prefixes += 1,
            _ => prefixes = 0,
        }
        if brackets + prefixes > limits.max_depth {
            return Err(QueryError::TooDeep {
                max: limits.max_depth,
                position: position(token.span),
            });
        }
    }
    Ok(Scan { tokens, first, semicolon })
}

fn parser(limits: &Limits) -> Parser<'static> {
    // sqlparser's own counter bounds its recursion (a level of brackets or NOT takes tens of
    // kilobytes of stack in a debug build); ours, in the converter, bounds the tree it builds.
    // A little headroom: the SELECT itself takes a few levels.
    Parser::new(&ConcordDialect).with_recursion_limit(limits.max_depth + 4)
}

/// sqlparser reports positions only inside its message (" at Line: L, Column: C").
fn from_parser_error(error: ParserError, limits: &Limits) -> QueryError {
    let message = match error {
        ParserError::RecursionLimitExceeded => {
            return QueryError::TooDeep { max: limits.max_depth, position: None };
        }
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
    };
    match message.rsplit_once(" at Line: ") {
        Some((head, tail)) => {
            let position = tail.split_once(", Column: ").and_then(|(line, column)| {
                Some(Position { line: line.parse().ok()?, column: column.trim().parse().ok()? })
            });
            QueryError::Syntax { message: head.to_owned(), position }
        }
        None => QueryError::Syntax { message, position: None },
    }
}

fn position(span: Span) -> Option<Position> {
    // sqlparser uses line 0 for "no span".
    (span.start.line > 0).then_some(Position { line: span.start.line, column: span.start.column })
}

fn unsupported(span: Span, message: impl Into<String>) -> QueryError {
    QueryError::Unsupported { message: message.into(), position: position(span) }
}

fn invalid(span: Span, message: impl Into<String>) -> QueryError {
    QueryError::Invalid { message: message.into(), position: position(span) }
}

struct Converter<'l> {
    limits: &'l Limits,
    terms: usize,
}

impl Converter<'_> {
    fn count_term(&mut self) -> Result<(), QueryError> {
        self.terms += 1;
        if self.terms > self.limits.max_terms {
            return Err(QueryError::TooManyTerms { max: self.limits.max_terms });
        }
        Ok(())
    }

    fn query(&mut self, query: &sql::Query) -> Result<Query, QueryError> {
        if let Some(with) = &query.with {
            return Err(unsupported(with.with_token.0.span, "WITH is not supported"));
        }
        if let Some(fetch) = &query.fetch {
            let _ = fetch;
            return Err(unsupported(Span::empty(), "FETCH is not supported; use LIMIT"));
        }
        if !query.locks.is_empty()
            || query.for_clause.is_some()
            || query.settings.is_some()
            || query.format_clause.is_some()
            || !query.pipe_operators.is_empty()
        {
            return Err(unsupported(
                Span::empty(),
                "only SELECT … FROM … WHERE … ORDER BY … LIMIT … OFFSET … is supported",
            ));
        }
        let select = match query.body.as_ref() {
            SetExpr::Select(select) => select,
            _ => {
                return Err(unsupported(
                    Span::empty(),
                    "only a plain SELECT is supported (no UNION, VALUES or subquery)",
                ));
            }
        };
        let (projection, collection, filter) = self.select(select)?;
        let order_by = match &query.order_by {
            None => Vec::new(),
            Some(order_by) => self.order_by(order_by)?,
        };
        let (limit, offset) = match &query.limit_clause {
            None => (None, 0),
            Some(clause) => self.limit(clause)?,
        };
        Ok(Query { projection, collection, filter, order_by, limit, offset })
    }

    fn select(
        &mut self,
        select: &sql::Select,
    ) -> Result<(Projection, String, Option<Expr>), QueryError> {
        let select_span = select.select_token.0.span;
        let refuse = |what: &str| Err(unsupported(select_span, format!("{what} is not supported")));
        if select.distinct.is_some() {
            return refuse("DISTINCT");
        }
        if select.top.is_some() {
            return refuse("TOP");
        }
        if select.into.is_some() {
            return refuse("SELECT INTO");
        }
        if !select.optimizer_hints.is_empty() || select.select_modifiers.is_some() {
            return refuse("a SELECT modifier");
        }
        if select.exclude.is_some() {
            return refuse("EXCLUDE");
        }
        if !select.lateral_views.is_empty() {
            return refuse("LATERAL VIEW");
        }
        if let Some(prewhere) = &select.prewhere {
            return Err(unsupported(start(prewhere), "PREWHERE is not supported"));
        }
        if !select.connect_by.is_empty() {
            return refuse("CONNECT BY");
        }
        match &select.group_by {
            GroupByExpr::Expressions(exprs, modifiers)
                if exprs.is_empty() && modifiers.is_empty() => {}
            GroupByExpr::Expressions(exprs, _) if !exprs.is_empty() => {
                return Err(unsupported(start(&exprs[0]), "GROUP BY is not supported"));
            }
            _ => return refuse("GROUP BY"),
        }
        if let Some(having) = &select.having {
            return Err(unsupported(start(having), "HAVING is not supported"));
        }
        if !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
        {
            return refuse("CLUSTER, DISTRIBUTE or SORT BY");
        }
        if !select.named_window.is_empty() || select.qualify.is_some() {
            return refuse("WINDOW or QUALIFY");
        }
        if select.value_table_mode.is_some() {
            return refuse("SELECT AS VALUE / STRUCT");
        }
        if select.flavor != SelectFlavor::Standard {
            return refuse("FROM before SELECT");
        }

        let projection = self.projection(&select.projection)?;
        let collection = self.collection(&select.from, select_span)?;
        let filter = match &select.selection {
            None => None,
            Some(expr) => Some(self.expr(expr, 1)?),
        };
        Ok((projection, collection, filter))
    }

    fn projection(&mut self, items: &[SelectItem]) -> Result<Projection, QueryError> {
        if let [SelectItem::Wildcard(options)] = items {
            let bare = options.opt_ilike.is_none()
                && options.opt_exclude.is_none()
                && options.opt_except.is_none()
                && options.opt_replace.is_none()
                && options.opt_rename.is_none()
                && options.opt_alias.is_none();
            if !bare {
                return Err(unsupported(Span::empty(), "only a bare * is supported"));
            }
            return Ok(Projection::All);
        }
        let mut paths = Vec::with_capacity(items.len());
        for item in items {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    self.count_term()?;
                    paths.push(self.path(expr)?);
                }
                SelectItem::ExprWithAlias { alias, .. } => {
                    return Err(unsupported(alias.span, "AS aliases are not supported"));
                }
                _ => {
                    return Err(unsupported(Span::empty(), "select either * or a list of paths"));
                }
            }
        }
        Ok(Projection::Paths(paths))
    }

    fn collection(
        &mut self,
        from: &[sql::TableWithJoins],
        select: Span,
    ) -> Result<String, QueryError> {
        let table = match from {
            [] => {
                return Err(QueryError::Syntax {
                    message: "expected FROM <collection>".into(),
                    position: position(select),
                });
            }
            [table] => table,
            [_, second, ..] => {
                return Err(unsupported(
                    table_start(&second.relation),
                    "a query reads one collection (no joins)",
                ));
            }
        };
        if let Some(join) = table.joins.first() {
            return Err(unsupported(table_start(&join.relation), "joins are not supported"));
        }
        let TableFactor::Table {
            name,
            alias,
            args,
            with_hints,
            version,
            with_ordinality,
            partitions,
            json_path,
            sample,
            index_directives,
            inheritance,
        } = &table.relation
        else {
            return Err(unsupported(
                table_start(&table.relation),
                "FROM takes a collection name (no subquery or function)",
            ));
        };
        let bare = alias.is_none()
            && args.is_none()
            && with_hints.is_empty()
            && version.is_none()
            && !with_ordinality
            && partitions.is_empty()
            && json_path.is_none()
            && sample.is_none()
            && index_directives.is_empty()
            && inheritance.is_none();
        if !bare {
            return Err(unsupported(
                table_start(&table.relation),
                "FROM takes a bare collection name (no alias or table options)",
            ));
        }
        match name.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => Ok(ident.value.clone()),
            _ => Err(unsupported(name.span(), "a collection name has one part")),
        }
    }

    fn order_by(&mut self, order_by: &sql::OrderBy) -> Result<Vec<OrderKey>, QueryError> {
        if order_by.interpolate.is_some() {
            return Err(unsupported(Span::empty(), "INTERPOLATE is not supported"));
        }
        let OrderByKind::Expressions(exprs) = &order_by.kind else {
            return Err(unsupported(Span::empty(), "ORDER BY ALL is not supported"));
        };
        let mut keys = Vec::with_capacity(exprs.len());
        for key in exprs {
            self.count_term()?;
            if key.with_fill.is_some() {
                return Err(unsupported(start(&key.expr), "WITH FILL is not supported"));
            }
            if key.options.nulls_first.is_some() {
                return Err(unsupported(
                    start(&key.expr),
                    "NULLS FIRST / LAST is not supported: missing and null always sort first",
                ));
            }
            let direction = match &key.options.sort {
                None | Some(OrderBySort::Asc) => Direction::Ascending,
                Some(OrderBySort::Desc) => Direction::Descending,
                Some(OrderBySort::Using(_)) => {
                    return Err(unsupported(start(&key.expr), "ORDER BY … USING is not supported"));
                }
            };
            keys.push(OrderKey { path: self.path(&key.expr)?, direction });
        }
        Ok(keys)
    }

    fn limit(&mut self, clause: &LimitClause) -> Result<(Option<u64>, u64), QueryError> {
        match clause {
            LimitClause::LimitOffset { limit, offset, limit_by } => {
                if let Some(by) = limit_by.first() {
                    return Err(unsupported(start(by), "LIMIT … BY is not supported"));
                }
                let limit = limit.as_ref().map(|l| count(l, "LIMIT")).transpose()?;
                let offset = offset.as_ref().map(|o| count(&o.value, "OFFSET")).transpose()?;
                Ok((limit, offset.unwrap_or(0)))
            }
            LimitClause::OffsetCommaLimit { offset, .. } => {
                Err(unsupported(start(offset), "write LIMIT n OFFSET m (not LIMIT m, n)"))
            }
        }
    }

    /// A path: `a`, `a.b`, `a[0]`, `"odd key".b[2]`.
    fn path(&mut self, expr: &sql::Expr) -> Result<Path, QueryError> {
        let mut segments = Vec::new();
        match expr {
            sql::Expr::Identifier(ident) => segments.push(Segment::Key(ident.value.clone())),
            sql::Expr::CompoundIdentifier(idents) => {
                segments.extend(idents.iter().map(|i| Segment::Key(i.value.clone())));
            }
            sql::Expr::CompoundFieldAccess { root, access_chain } => {
                match root.as_ref() {
                    sql::Expr::Identifier(ident) => {
                        segments.push(Segment::Key(ident.value.clone()))
                    }
                    sql::Expr::CompoundIdentifier(idents) => {
                        segments.extend(idents.iter().map(|i| Segment::Key(i.value.clone())));
                    }
                    other => return Err(not_a_path(other)),
                }
                for access in access_chain {
                    match access {
                        AccessExpr::Dot(sql::Expr::Identifier(ident))
                            if ident.quote_style != Some('\'') =>
                        {
                            segments.push(Segment::Key(ident.value.clone()));
                        }
                        AccessExpr::Subscript(Subscript::Index { index }) => {
                            segments.push(Segment::Index(array_index(index)?));
                        }
                        AccessExpr::Dot(other) => return Err(not_a_path(other)),
                        AccessExpr::Subscript(_) => {
                            return Err(unsupported(
                                Span::empty(),
                                "array slices are not supported; write [n]",
                            ));
                        }
                    }
                }
            }
            other => return Err(not_a_path(other)),
        }
        Ok(Path(segments))
    }

    /// A condition, `depth` levels deep.
    fn expr(&mut self, expr: &sql::Expr, depth: usize) -> Result<Expr, QueryError> {
        if depth > self.limits.max_depth {
            return Err(QueryError::TooDeep { max: self.limits.max_depth, position: None });
        }
        match expr {
            sql::Expr::Nested(inner) => self.expr(inner, depth + 1),
            sql::Expr::BinaryOp { op: op @ (BinaryOperator::And | BinaryOperator::Or), .. } => {
                // A chain `a AND b AND c` is a left-deep tree of any length: walk its left
                // spine in a loop so the chain's length never becomes recursion depth.
                let mut operands = Vec::new();
                let mut node = expr;
                while let sql::Expr::BinaryOp { left, op: this, right } = node {
                    if this != op {
                        break;
                    }
                    operands.push(right.as_ref());
                    node = left.as_ref();
                }
                operands.push(node);
                operands.reverse();
                let mut converted = Vec::with_capacity(operands.len());
                for operand in operands {
                    converted.push(self.expr(operand, depth + 1)?);
                }
                Ok(match op {
                    BinaryOperator::And => Expr::And(converted),
                    _ => Expr::Or(converted),
                })
            }
            sql::Expr::BinaryOp { left, op, right } => {
                self.count_term()?;
                let op = match op {
                    BinaryOperator::Eq => CompareOp::Eq,
                    BinaryOperator::NotEq => CompareOp::NotEq,
                    BinaryOperator::Lt => CompareOp::Lt,
                    BinaryOperator::LtEq => CompareOp::LtEq,
                    BinaryOperator::Gt => CompareOp::Gt,
                    BinaryOperator::GtEq => CompareOp::GtEq,
                    other => {
                        return Err(unsupported(
                            start(expr),
                            format!("the operator {other} is not supported"),
                        ));
                    }
                };
                if is_literal(left) && !is_literal(right) {
                    Ok(Expr::Compare {
                        path: self.path(right)?,
                        op: op.mirrored(),
                        value: literal(left)?,
                    })
                } else if is_literal(right) {
                    Ok(Expr::Compare { path: self.path(left)?, op, value: literal(right)? })
                } else {
                    Err(unsupported(
                        start(expr),
                        "a comparison takes a path on one side and a literal on the other",
                    ))
                }
            }
            sql::Expr::UnaryOp { op: UnaryOperator::Not, expr: inner } => {
                Ok(Expr::Not(Box::new(self.expr(inner, depth + 1)?)))
            }
            sql::Expr::In {
                expr: target,
                target: InTarget::List(items),
                negated,
                global: false,
            } => {
                self.count_term()?;
                let path = self.path(target)?;
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    self.count_term()?;
                    list.push(literal(item)?);
                }
                Ok(Expr::In { path, list, negated: *negated })
            }
            sql::Expr::In { target: InTarget::List(_), .. } => {
                Err(unsupported(start(expr), "GLOBAL IN is not supported"))
            }
            sql::Expr::In { .. } => {
                Err(unsupported(start(expr), "IN takes a list of literals (no subquery)"))
            }
            sql::Expr::Like { negated, any: false, expr: target, pattern, escape_char } => {
                self.count_term()?;
                let path = self.path(target)?;
                let pattern = match literal(pattern)? {
                    Literal::String(s) => s,
                    _ => return Err(invalid(start(pattern), "a LIKE pattern is a string")),
                };
                let escape = match escape_char {
                    None => None,
                    Some(escape) => match literal(escape)? {
                        Literal::String(s) if s.chars().count() == 1 => s.chars().next(),
                        _ => {
                            return Err(invalid(
                                start(escape),
                                "an ESCAPE is a string of one character",
                            ));
                        }
                    },
                };
                let pattern = LikePattern::new(&pattern, escape)
                    .map_err(|message| invalid(start(expr), message))?;
                Ok(Expr::Like { path, pattern, negated: *negated })
            }
            sql::Expr::IsNull(target) | sql::Expr::IsNotNull(target) => {
                self.count_term()?;
                let negated = matches!(expr, sql::Expr::IsNotNull(_));
                Ok(Expr::IsNull { path: self.path(target)?, negated })
            }
            sql::Expr::Identifier(_)
            | sql::Expr::CompoundIdentifier(_)
            | sql::Expr::CompoundFieldAccess { .. }
            | sql::Expr::Value(_) => Err(unsupported(
                start(expr),
                "a condition compares a path (write `done = true`, not `done`)",
            )),
            sql::Expr::Function(function) => Err(unsupported(
                function.name.span(),
                format!("the function {} is not supported", function.name),
            )),
            sql::Expr::Subquery(_) | sql::Expr::Exists { .. } => {
                Err(unsupported(start(expr), "subqueries are not supported"))
            }
            _ => Err(unsupported(start(expr), "this expression is not supported in WHERE")),
        }
    }
}

fn not_a_path(expr: &sql::Expr) -> QueryError {
    match expr {
        sql::Expr::Function(function) => unsupported(
            function.name.span(),
            format!(
                "expected a path such as a.b[0]; the function {} is not supported",
                function.name
            ),
        ),
        _ => unsupported(start(expr), "expected a path such as a.b[0]"),
    }
}

fn is_literal(expr: &sql::Expr) -> bool {
    match expr {
        sql::Expr::Value(_) => true,
        sql::Expr::UnaryOp { op: UnaryOperator::Minus | UnaryOperator::Plus, expr } => {
            matches!(expr.as_ref(), sql::Expr::Value(v) if matches!(v.value, sql::Value::Number(..)))
        }
        _ => false,
    }
}

fn literal(expr: &sql::Expr) -> Result<Literal, QueryError> {
    let (negative, value) = match expr {
        sql::Expr::Value(value) => (false, value),
        sql::Expr::UnaryOp { op, expr: inner } if is_literal(expr) => match inner.as_ref() {
            sql::Expr::Value(value) => (*op == UnaryOperator::Minus, value),
            _ => unreachable!("is_literal checked the operand"),
        },
        other => {
            return Err(unsupported(start(other), "expected a literal"));
        }
    };
    match &value.value {
        sql::Value::Number(text, _) => {
            let n: f64 = text
                .parse()
                .map_err(|_| invalid(value.span, format!("`{text}` is not a number")))?;
            if !n.is_finite() {
                return Err(invalid(value.span, format!("`{text}` is out of range")));
            }
            Ok(Literal::Number(if negative { -n } else { n }))
        }
        sql::Value::SingleQuotedString(s) => Ok(Literal::String(s.clone())),
        sql::Value::Boolean(b) => Ok(Literal::Boolean(*b)),
        sql::Value::Null => Ok(Literal::Null),
        other => Err(unsupported(
            value.span,
            format!("the literal {other} is not supported (strings are single-quoted)"),
        )),
    }
}

fn array_index(expr: &sql::Expr) -> Result<usize, QueryError> {
    match expr {
        sql::Expr::Value(v) => match &v.value {
            sql::Value::Number(text, _) => text.parse().map_err(|_| {
                invalid(v.span, format!("array index `{text}` is not a non-negative integer"))
            }),
            _ => Err(invalid(v.span, "an array index is a non-negative integer")),
        },
        other => Err(invalid(start(other), "an array index is a non-negative integer")),
    }
}

/// LIMIT and OFFSET: a non-negative integer.
fn count(expr: &sql::Expr, what: &str) -> Result<u64, QueryError> {
    match expr {
        sql::Expr::Value(v) => match &v.value {
            sql::Value::Number(text, _) => text.parse().map_err(|_| {
                invalid(v.span, format!("{what} takes a non-negative integer, not `{text}`"))
            }),
            _ => Err(invalid(v.span, format!("{what} takes a non-negative integer"))),
        },
        other => Err(invalid(start(other), format!("{what} takes a non-negative integer"))),
    }
}

/// Where an expression starts. sqlparser's `span()` walks the whole subtree (deep for a long
/// `1 + 1 + …`), so this follows the leftmost child a bounded number of steps instead and asks
/// only a leaf for its span.
fn start(expr: &sql::Expr) -> Span {
    let mut node = expr;
    for _ in 0..64 {
        node = match node {
            sql::Expr::BinaryOp { left, .. } => left,
            sql::Expr::Nested(inner) => inner,
            sql::Expr::IsNull(inner) | sql::Expr::IsNotNull(inner) => inner,
            sql::Expr::IsTrue(inner) | sql::Expr::IsFalse(inner) => inner,
            sql::Expr::Like { expr, .. }
            | sql::Expr::ILike { expr, .. }
            | sql::Expr::SimilarTo { expr, .. }
            | sql::Expr::In { expr, .. }
            | sql::Expr::Between { expr, .. } => expr,
            sql::Expr::Identifier(ident) => return ident.span,
            sql::Expr::CompoundIdentifier(idents) => {
                return idents.first().map_or(Span::empty(), |i| i.span);
            }
            sql::Expr::CompoundFieldAccess { root, .. } => root,
            sql::Expr::Value(value) => return value.span,
            sql::Expr::Function(function) => return function.name.span(),
            // The operator has no span of its own; its operand starts just after it.
            sql::Expr::UnaryOp { expr, .. } => expr,
            _ => return Span::empty(),
        };
    }
    Span::empty()
}

/// Where a FROM item starts, without walking a subquery.
fn table_start(factor: &TableFactor) -> Span {
    match factor {
        TableFactor::Table { name, .. } => name.span(),
        _ => Span::empty(),
    }
}
