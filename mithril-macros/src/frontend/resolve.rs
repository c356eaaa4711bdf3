//! Step 2: terminal resolution. Maps the arguments of a submodel call to the submodel's input
//! terminals: positional arguments in declaration order, named ones (`Block(x = a)`) by name.
//! Unknown, repeated and missing terminals are errors spanned on the call.

use proc_macro2::Span;

/// One argument of a call: `name = value` or a positional value.
pub struct Arg<T> {
    pub name: Option<(String, Span)>,
    pub value: T,
    pub span: Span,
}

/// Bind `args` to `terminals` (names in declaration order). Returns one slot per terminal.
pub fn bind_terminals<T: Clone>(
    model: &str,
    terminals: &[String],
    args: &[Arg<T>],
    call_span: Span,
) -> Result<Vec<T>, Vec<syn::Error>> {
    let mut slots: Vec<Option<T>> = vec![None; terminals.len()];
    let mut errors = Vec::new();
    let mut pos = 0;
    for a in args {
        match &a.name {
            None => {
                if pos >= terminals.len() {
                    errors.push(syn::Error::new(
                        a.span,
                        format!(
                            "`{model}` takes {} input(s) ({}), but more arguments were given",
                            terminals.len(),
                            terminals.join(", ")
                        ),
                    ));
                } else {
                    slots[pos] = Some(a.value.clone());
                }
                pos += 1;
            }
            Some((n, sp)) => match terminals.iter().position(|t| t == n) {
                None => errors.push(syn::Error::new(
                    *sp,
                    format!(
                        "`{model}` has no input terminal `{n}`; its inputs are: {}",
                        terminals.join(", ")
                    ),
                )),
                Some(i) if slots[i].is_some() => errors.push(syn::Error::new(
                    *sp,
                    format!("input terminal `{n}` of `{model}` is given twice"),
                )),
                Some(i) => slots[i] = Some(a.value.clone()),
            },
        }
    }
    let missing: Vec<&str> = terminals
        .iter()
        .zip(&slots)
        .filter(|(_, s)| s.is_none())
        .map(|(t, _)| t.as_str())
        .collect();
    if !missing.is_empty() && errors.is_empty() {
        errors.push(syn::Error::new(
            call_span,
            format!(
                "missing input terminal(s) of `{model}`: {}",
                missing.join(", ")
            ),
        ));
    }
    if errors.is_empty() {
        Ok(slots.into_iter().flatten().collect())
    } else {
        Err(errors)
    }
}
