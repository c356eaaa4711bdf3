//! Step 0: the surface syntax. Parses the tokens of a `mithril!` invocation into an AST.
//! Expressions are Rust expressions (`syn::Expr`); everything else is DSL.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    braced, bracketed, parenthesized, token, Attribute, Expr, Ident, LitStr, Token, Visibility,
};

pub mod kw {
    syn::custom_keyword!(model);
    syn::custom_keyword!(train);
    syn::custom_keyword!(compile);
    syn::custom_keyword!(input);
    syn::custom_keyword!(param);
    syn::custom_keyword!(buffer);
    syn::custom_keyword!(update);
    syn::custom_keyword!(output);
    syn::custom_keyword!(loss);
    syn::custom_keyword!(regularize);
    syn::custom_keyword!(on);
    syn::custom_keyword!(deps);
    syn::custom_keyword!(stack);
    syn::custom_keyword!(max_steps);
}

/// A whole invocation.
pub struct File {
    pub items: Vec<Item>,
    /// The tokens the file was parsed from (re-sent after fetching carried models).
    pub tokens: TokenStream,
}

pub enum Item {
    Model(ModelDef),
    Compile(CompileDef),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModelKind {
    Model,
    Train,
}

/// `model Name(hyper: ty = default, ...) { stmts }`
#[derive(Clone)]
pub struct ModelDef {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub kind: ModelKind,
    pub name: Ident,
    pub hypers: Vec<HyperParam>,
    pub body: Vec<Stmt>,
    /// The model's own tokens (carried to other invocations).
    pub tokens: TokenStream,
}

#[derive(Clone)]
pub struct HyperParam {
    pub name: Ident,
    pub ty: Ident,
    pub default: Option<Expr>,
}

/// One dim of a declared shape.
#[derive(Clone)]
pub enum DimDecl {
    /// `784`
    Lit(u64),
    /// `B` (upper-case identifier): a symbolic dim
    Sym(Ident),
    /// `_`: dynamic
    Any,
    /// `...`: any number of leading dims
    Ellipsis(Span),
    /// an expression over hyperparameters (`dimension`, `hidden * 4`)
    Expr(Box<Expr>),
}

#[derive(Clone)]
pub struct ShapeDecl {
    pub dims: Vec<DimDecl>,
}

/// A type annotation `f32[B, 784]` (dtype optional: `[B, 784]`).
#[derive(Clone)]
pub struct TypeDecl {
    pub dtype: Option<Ident>,
    pub shape: Option<ShapeDecl>,
}

#[derive(Clone)]
pub enum Pat {
    Ident(Ident),
    Tuple(Vec<Ident>, Span),
}

#[derive(Clone)]
pub enum Stmt {
    Input {
        name: Ident,
        ty: TypeDecl,
        span: Span,
    },
    Param {
        name: Ident,
        ty: TypeDecl,
        init: Option<Expr>,
        span: Span,
        /// `buffer name: T = init;`: persistent state, never differentiated
        buffer: bool,
    },
    /// `update name = expr;`: buffer `name` holds `expr` after a training-mode call
    Update {
        name: Ident,
        expr: Expr,
    },
    Const {
        name: Ident,
        dtype: Option<Ident>,
        value: Expr,
        span: Span,
    },
    Let {
        pat: Pat,
        expr: Expr,
    },
    Output {
        name: Ident,
        expr: Option<Expr>,
    },
    If {
        cond: Expr,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
    For {
        var: Ident,
        iter: Expr,
        body: Vec<Stmt>,
    },
    /// `while cond { .. }` / `while cond, max_steps = N { .. }`
    While {
        cond: Expr,
        max_steps: Option<Expr>,
        body: Vec<Stmt>,
        span: Span,
    },
    /// `stack ys[(.., t)] = y;` inside a run-time `for t in 0..T`: `ys` is the per-step values
    /// stacked along the axis where `t` stands.
    Stack {
        name: Ident,
        index: Expr,
        expr: Expr,
    },
    Loss {
        expr: Expr,
        span: Span,
    },
    /// `regularize l2(coef) on "glob";` (parsed; compiled once gradients exist)
    #[allow(dead_code)]
    Regularize {
        kind: Ident,
        coef: Expr,
        glob: LitStr,
        span: Span,
    },
}

/// `compile Name = Model { options };`
pub struct CompileDef {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    pub model: syn::Path,
    /// `compile Lin64 = Linear(64) { .. }`: the hyperparameter arguments (positional or
    /// `name = value`) and the span of their parentheses; `None` without parentheses.
    pub hyper_args: Option<(Vec<Expr>, Span)>,
    pub options: Vec<(Ident, OptValue)>,
}

/// A compile option value.
#[derive(Clone)]
pub enum OptValue {
    Lit(syn::Lit),
    Ident(Ident),
    Underscore(Span),
    List(Vec<OptValue>, Span),
    Map(Vec<(OptKey, OptValue)>, Span),
}

/// A key of an option map: a name (`x`, `device`) or a string literal (`"enc.attn"`, for keys
/// that are not identifiers, such as the instance paths of `backend_map`).
#[derive(Clone)]
pub struct OptKey {
    pub name: String,
    pub span: Span,
    /// The key as written when it is a name (`None`: a string literal).
    pub ident: Option<Ident>,
}

impl OptKey {
    pub fn span(&self) -> Span {
        self.span
    }
}

impl std::fmt::Display for OptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl<T: AsRef<str> + ?Sized> PartialEq<T> for OptKey {
    fn eq(&self, other: &T) -> bool {
        self.name == other.as_ref()
    }
}

impl OptValue {
    pub fn span(&self) -> Span {
        match self {
            OptValue::Lit(l) => l.span(),
            OptValue::Ident(i) => i.span(),
            OptValue::Underscore(s) | OptValue::List(_, s) | OptValue::Map(_, s) => *s,
        }
    }
}

impl Parse for File {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut items = Vec::new();
        while !input.is_empty() {
            let start = input.cursor();
            let mut item: Item = input.parse()?;
            if let Item::Model(m) = &mut item {
                m.tokens = tokens_between(start, input.cursor());
            }
            items.push(item);
        }
        Ok(File {
            items,
            tokens: TokenStream::new(),
        })
    }
}

impl Parse for Item {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        if input.peek(kw::compile) {
            input.parse::<kw::compile>()?;
            let name: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let model: syn::Path = input.parse()?;
            let hyper_args = if input.peek(token::Paren) {
                let args;
                let paren = parenthesized!(args in input);
                let list = args.parse_terminated(Expr::parse, Token![,])?;
                Some((list.into_iter().collect(), paren.span.join()))
            } else {
                None
            };
            let content;
            braced!(content in input);
            // option names are identifiers (quoted keys are for values such as `backend_map`)
            let options = parse_opt_map(&content)?
                .into_iter()
                .map(|(k, v)| match k.ident {
                    Some(i) => Ok((i, v)),
                    None => Err(syn::Error::new(
                        k.span,
                        format!(
                            "an option name is an identifier: `{}`, not a string",
                            k.name
                        ),
                    )),
                })
                .collect::<syn::Result<Vec<_>>>()?;
            input.parse::<Token![;]>()?;
            return Ok(Item::Compile(CompileDef {
                attrs,
                vis,
                name,
                model,
                hyper_args,
                options,
            }));
        }
        let kind = if input.peek(kw::model) {
            input.parse::<kw::model>()?;
            ModelKind::Model
        } else if input.peek(kw::train) {
            input.parse::<kw::train>()?;
            ModelKind::Train
        } else {
            return Err(input.error("expected `model`, `train` or `compile`"));
        };
        let name: Ident = input.parse()?;
        let mut hypers = Vec::new();
        if input.peek(token::Paren) {
            let content;
            parenthesized!(content in input);
            while !content.is_empty() {
                let name: Ident = content.parse()?;
                content.parse::<Token![:]>()?;
                let ty: Ident = content.call(Ident::parse_any)?;
                let default = if content.peek(Token![=]) {
                    content.parse::<Token![=]>()?;
                    Some(content.parse::<Expr>()?)
                } else {
                    None
                };
                hypers.push(HyperParam { name, ty, default });
                if !content.is_empty() {
                    content.parse::<Token![,]>()?;
                }
            }
        }
        let content;
        braced!(content in input);
        let body = parse_stmts(&content)?;
        Ok(Item::Model(ModelDef {
            attrs,
            vis,
            kind,
            name,
            hypers,
            body,
            tokens: TokenStream::new(),
        }))
    }
}

pub fn parse_stmts(input: ParseStream) -> syn::Result<Vec<Stmt>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        out.push(parse_stmt(input)?);
    }
    Ok(out)
}

fn parse_type(input: ParseStream) -> syn::Result<TypeDecl> {
    let dtype = if input.peek(Ident) {
        Some(input.parse::<Ident>()?)
    } else {
        None
    };
    let shape = if input.peek(token::Bracket) {
        Some(parse_shape(input)?)
    } else {
        None
    };
    if dtype.is_none() && shape.is_none() {
        return Err(input.error("expected a type like `f32[B, 784]`"));
    }
    Ok(TypeDecl { dtype, shape })
}

pub fn parse_shape(input: ParseStream) -> syn::Result<ShapeDecl> {
    let content;
    bracketed!(content in input);
    let mut dims = Vec::new();
    while !content.is_empty() {
        dims.push(parse_dim(&content)?);
        if !content.is_empty() {
            content.parse::<Token![,]>()?;
        }
    }
    Ok(ShapeDecl { dims })
}

fn parse_dim(input: ParseStream) -> syn::Result<DimDecl> {
    if input.peek(Token![...]) {
        let t: Token![...] = input.parse()?;
        return Ok(DimDecl::Ellipsis(t.spans[0]));
    }
    if input.peek(Token![_]) && (input.peek2(Token![,]) || peek_end(input)) {
        input.parse::<Token![_]>()?;
        return Ok(DimDecl::Any);
    }
    let e: Expr = input.parse()?;
    Ok(classify_dim(e))
}

fn peek_end(input: ParseStream) -> bool {
    let f = input.fork();
    let _ = f.parse::<Token![_]>();
    f.is_empty()
}

pub fn classify_dim(e: Expr) -> DimDecl {
    match &e {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => match i.base10_parse::<u64>() {
            Ok(n) => DimDecl::Lit(n),
            Err(_) => DimDecl::Expr(Box::new(e)),
        },
        Expr::Path(p) if p.path.segments.len() == 1 && p.qself.is_none() => {
            let id = &p.path.segments[0].ident;
            let s = id.to_string();
            if is_symbol(&s) {
                DimDecl::Sym(id.clone())
            } else {
                DimDecl::Expr(Box::new(e))
            }
        }
        Expr::Infer(_) => DimDecl::Any,
        _ => DimDecl::Expr(Box::new(e)),
    }
}

/// `B`, `SEQ_LEN`, `D2`: upper-case identifiers are symbolic dims.
pub fn is_symbol(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn parse_stmt(input: ParseStream) -> syn::Result<Stmt> {
    let start = input.span();
    if input.peek(kw::input) {
        input.parse::<kw::input>()?;
        let name: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let ty = parse_type(input)?;
        input.parse::<Token![;]>()?;
        let span = start.join(name.span()).unwrap_or(start);
        return Ok(Stmt::Input { name, ty, span });
    }
    if input.peek(kw::update) && input.peek2(Ident) {
        input.parse::<kw::update>()?;
        let name: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let expr: Expr = input.parse()?;
        input.parse::<Token![;]>()?;
        return Ok(Stmt::Update { name, expr });
    }
    let buffer = input.peek(kw::buffer) && input.peek2(Ident);
    if input.peek(kw::param) || buffer {
        if buffer {
            input.parse::<kw::buffer>()?;
        } else {
            input.parse::<kw::param>()?;
        }
        let name: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let ty = parse_type(input)?;
        let init = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse::<Expr>()?)
        } else {
            None
        };
        input.parse::<Token![;]>()?;
        let span = name.span();
        return Ok(Stmt::Param {
            name,
            ty,
            init,
            span,
            buffer,
        });
    }
    if input.peek(Token![const]) {
        input.parse::<Token![const]>()?;
        let name: Ident = input.parse()?;
        let dtype = if input.peek(Token![:]) {
            input.parse::<Token![:]>()?;
            Some(input.parse::<Ident>()?)
        } else {
            None
        };
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        input.parse::<Token![;]>()?;
        let span = name.span();
        return Ok(Stmt::Const {
            name,
            dtype,
            value,
            span,
        });
    }
    if input.peek(Token![let]) {
        input.parse::<Token![let]>()?;
        let pat = if input.peek(token::Paren) {
            let content;
            let p = parenthesized!(content in input);
            let ids: Punctuated<Ident, Token![,]> =
                content.parse_terminated(Ident::parse, Token![,])?;
            Pat::Tuple(ids.into_iter().collect(), p.span.join())
        } else {
            Pat::Ident(input.parse()?)
        };
        input.parse::<Token![=]>()?;
        let expr: Expr = input.parse()?;
        input.parse::<Token![;]>()?;
        return Ok(Stmt::Let { pat, expr });
    }
    if input.peek(kw::output) {
        input.parse::<kw::output>()?;
        let name: Ident = input.parse()?;
        let expr = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse::<Expr>()?)
        } else {
            None
        };
        input.parse::<Token![;]>()?;
        return Ok(Stmt::Output { name, expr });
    }
    if input.peek(kw::loss) {
        input.parse::<kw::loss>()?;
        let expr: Expr = input.parse()?;
        input.parse::<Token![;]>()?;
        return Ok(Stmt::Loss {
            span: expr.span(),
            expr,
        });
    }
    if input.peek(kw::regularize) {
        input.parse::<kw::regularize>()?;
        let kind: Ident = input.parse()?;
        let content;
        parenthesized!(content in input);
        let coef: Expr = content.parse()?;
        input.parse::<kw::on>()?;
        let glob: LitStr = input.parse()?;
        input.parse::<Token![;]>()?;
        let span = kind.span();
        return Ok(Stmt::Regularize {
            kind,
            coef,
            glob,
            span,
        });
    }
    if input.peek(Token![if]) {
        input.parse::<Token![if]>()?;
        let cond = Expr::parse_without_eager_brace(input)?;
        let content;
        braced!(content in input);
        let then = parse_stmts(&content)?;
        let els = if input.peek(Token![else]) {
            input.parse::<Token![else]>()?;
            if input.peek(Token![if]) {
                vec![parse_stmt(input)?]
            } else {
                let content;
                braced!(content in input);
                parse_stmts(&content)?
            }
        } else {
            vec![]
        };
        return Ok(Stmt::If { cond, then, els });
    }
    if input.peek(Token![while]) {
        let span = input.parse::<Token![while]>()?.span;
        let cond = Expr::parse_without_eager_brace(input)?;
        let max_steps = if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
            input.parse::<kw::max_steps>()?;
            input.parse::<Token![=]>()?;
            Some(Expr::parse_without_eager_brace(input)?)
        } else {
            None
        };
        let content;
        braced!(content in input);
        let body = parse_stmts(&content)?;
        return Ok(Stmt::While {
            cond,
            max_steps,
            body,
            span,
        });
    }
    if input.peek(kw::stack) && input.peek2(Ident) {
        input.parse::<kw::stack>()?;
        let name: Ident = input.parse()?;
        let content;
        syn::bracketed!(content in input);
        let index: Expr = content.parse()?;
        input.parse::<Token![=]>()?;
        let expr: Expr = input.parse()?;
        input.parse::<Token![;]>()?;
        return Ok(Stmt::Stack { name, index, expr });
    }
    if input.peek(Token![for]) {
        input.parse::<Token![for]>()?;
        let var: Ident = input.parse()?;
        input.parse::<Token![in]>()?;
        let iter = Expr::parse_without_eager_brace(input)?;
        let content;
        braced!(content in input);
        let body = parse_stmts(&content)?;
        return Ok(Stmt::For { var, iter, body });
    }
    Err(input.error(
        "expected a statement: `input`, `param`, `const`, `let`, `output`, `loss`, `regularize`, `if`, `for`, `while` or `stack`",
    ))
}

fn parse_opt_map(input: ParseStream) -> syn::Result<Vec<(OptKey, OptValue)>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = if input.peek(LitStr) {
            let s: LitStr = input.parse()?;
            OptKey {
                name: s.value(),
                span: s.span(),
                ident: None,
            }
        } else {
            let i: Ident = input.call(syn::ext::IdentExt::parse_any)?;
            OptKey {
                name: i.to_string(),
                span: i.span(),
                ident: Some(i),
            }
        };
        input.parse::<Token![:]>()?;
        let v = parse_opt_value(input)?;
        out.push((key, v));
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(out)
}

fn parse_opt_value(input: ParseStream) -> syn::Result<OptValue> {
    if input.peek(token::Bracket) {
        let content;
        let b = bracketed!(content in input);
        let mut xs = Vec::new();
        while !content.is_empty() {
            xs.push(parse_opt_value(&content)?);
            if !content.is_empty() {
                content.parse::<Token![,]>()?;
            }
        }
        return Ok(OptValue::List(xs, b.span.join()));
    }
    if input.peek(token::Brace) {
        let content;
        let b = braced!(content in input);
        return Ok(OptValue::Map(parse_opt_map(&content)?, b.span.join()));
    }
    if input.peek(Token![_]) {
        let t: Token![_] = input.parse()?;
        return Ok(OptValue::Underscore(t.span));
    }
    if input.peek(syn::Lit) {
        return Ok(OptValue::Lit(input.parse()?));
    }
    if input.peek(Ident::peek_any) {
        return Ok(OptValue::Ident(input.call(syn::ext::IdentExt::parse_any)?));
    }
    Err(input.error("expected an option value: a literal, a name, `[...]` or `{ ... }`"))
}

use syn::ext::IdentExt as _;

/// The token trees from `start` up to (not including) `end`.
pub fn tokens_between(start: syn::buffer::Cursor, end: syn::buffer::Cursor) -> TokenStream {
    let mut out = TokenStream::new();
    let mut c = start;
    while c < end {
        match c.token_tree() {
            Some((tt, next)) => {
                out.extend(std::iter::once(tt));
                c = next;
            }
            None => break,
        }
    }
    out
}
