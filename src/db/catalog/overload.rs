//! Overload choice: which of the functions sharing a name a call means,
//! by the names or the number of its params; never a guess.

use super::function::Function;
use super::params::{ParamError, Supplied};

/// Picks the one overload that accepts `supplied`; never guesses.
pub(super) fn choose<'f>(
    candidates: &'f [Function],
    supplied: &Supplied,
) -> Result<&'f Function, ParamError> {
    if let [only] = candidates {
        // A single function gets the precise "missing"/"unknown" errors.
        return Ok(only);
    }
    let fits: Vec<&Function> = candidates.iter().filter(|f| f.accepts(supplied)).collect();
    let signatures = |list: &[&Function]| {
        list.iter()
            .map(|f| f.signature())
            .collect::<Vec<_>>()
            .join("; ")
    };
    match fits.as_slice() {
        [one] => Ok(one),
        [] => {
            let all: Vec<&Function> = candidates.iter().collect();
            Err(ParamError::new(
                None,
                format!(
                    "no overload of api.{} accepts {}; its signatures are: {}",
                    candidates[0].name,
                    supplied.describe(),
                    signatures(&all)
                ),
            ))
        }
        several => Err(ParamError::new(
            None,
            format!(
                "ambiguous call of api.{}: {} fit {} overloads: {}; pass params that only one of them accepts",
                candidates[0].name,
                supplied.describe(),
                several.len(),
                signatures(several)
            ),
        )),
    }
}

impl Function {
    /// The number of arguments a call must supply.
    fn required(&self) -> usize {
        self.args.iter().filter(|a| !a.has_default).count()
    }

    /// Whether `supplied` names or counts fit this signature (types aside).
    fn accepts(&self, supplied: &Supplied) -> bool {
        match supplied {
            Supplied::Named(map) => {
                map.keys()
                    .all(|k| self.args.iter().any(|a| !a.name.is_empty() && &a.name == k))
                    && self
                        .args
                        .iter()
                        .all(|a| a.has_default || (!a.name.is_empty() && map.contains_key(&a.name)))
            }
            Supplied::Positional(list) => {
                self.required() <= list.len() && list.len() <= self.args.len()
            }
        }
    }
}
