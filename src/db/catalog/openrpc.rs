//! The OpenRPC method objects (<https://spec.open-rpc.org>) of the
//! catalogue: one per function name, overloads merged into one.

use serde_json::{json, Value};

use super::function::{Arg, Function};

/// The OpenRPC method of the functions called one name.
pub(super) fn method(overloads: &[Function]) -> Value {
    match overloads {
        [only] => only.openrpc_method(),
        several => merged_method(several),
    }
}

impl Function {
    /// This function's OpenRPC method object.
    fn openrpc_method(&self) -> Value {
        let mut method = json!({
            "name": format!("api.{}", self.name),
            "summary": format!("{}.{} returns {}", self.schema, self.signature(), self.return_type),
            "params": self.args.iter().map(Arg::content_descriptor).collect::<Vec<_>>(),
            "result": {"name": "result", "schema": self.result_schema},
            "paramStructure": self.param_structure(),
        });
        if let Some(description) = &self.description {
            method["description"] = json!(description);
        }
        method
    }

    fn param_structure(&self) -> &'static str {
        if self.args.iter().any(|a| a.name.is_empty()) {
            "by-position"
        } else {
            "either"
        }
    }
}

impl Arg {
    /// The OpenRPC content descriptor of this argument.
    fn content_descriptor(&self) -> Value {
        let mut schema = self.binding.schema();
        if let (Some(labels), Value::Object(map)) = (&self.binding.labels, &mut schema) {
            let target = if self.binding.array {
                map.get_mut("items").and_then(Value::as_object_mut)
            } else {
                Some(map)
            };
            if let Some(target) = target {
                target.insert("enum".into(), json!(labels));
            }
        }
        let mut type_text = self.type_name.clone();
        if self.variadic {
            type_text.insert_str(0, "VARIADIC ");
        }
        json!({
            "name": self.label,
            "required": !self.has_default,
            "schema": schema,
            "x-postgres-type": type_text,
        })
    }
}

/// One OpenRPC method for several overloads of one name.
fn merged_method(overloads: &[Function]) -> Value {
    let first = &overloads[0];
    let mut params: Vec<Value> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for arg in overloads.iter().flat_map(|f| &f.args) {
        if arg.name.is_empty() || seen.contains(&arg.name.as_str()) {
            continue;
        }
        seen.push(&arg.name);
        let same_name: Vec<&Arg> = overloads
            .iter()
            .flat_map(|f| f.args.iter().filter(|a| a.name == arg.name))
            .collect();
        let required = overloads
            .iter()
            .all(|f| f.args.iter().any(|a| a.name == arg.name && !a.has_default));
        let mut schemas: Vec<Value> = Vec::new();
        for a in &same_name {
            let s = a.content_descriptor()["schema"].clone();
            if !schemas.contains(&s) {
                schemas.push(s);
            }
        }
        let mut types: Vec<&str> = Vec::new();
        for a in &same_name {
            if !types.contains(&a.type_name.as_str()) {
                types.push(&a.type_name);
            }
        }
        params.push(json!({
            "name": arg.name,
            "required": required,
            "schema": one_of(schemas),
            "x-postgres-type": types.join(" | "),
        }));
    }
    let mut results: Vec<Value> = Vec::new();
    for f in overloads {
        if !results.contains(&f.result_schema) {
            results.push(f.result_schema.clone());
        }
    }
    let signatures: Vec<String> = overloads.iter().map(Function::signature).collect();
    let mut description: Vec<String> = Vec::new();
    for text in overloads.iter().filter_map(|f| f.description.as_ref()) {
        if !description.contains(text) {
            description.push(text.clone());
        }
    }
    description.push(format!(
        "Overloaded; the params must fit exactly one of: {}",
        signatures.join("; ")
    ));
    json!({
        "name": format!("api.{}", first.name),
        "summary": format!("{} overloads of {}.{}", overloads.len(), first.schema, first.name),
        "description": description.join("\n\n"),
        "params": params,
        "result": {"name": "result", "schema": one_of(results)},
        "paramStructure": "either",
    })
}

fn one_of(mut schemas: Vec<Value>) -> Value {
    if schemas.len() == 1 {
        schemas.remove(0)
    } else {
        json!({ "oneOf": schemas })
    }
}
