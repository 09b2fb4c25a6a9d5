//! LwM2M nodes as JSON, and JSON values typed by the object model.
//!
//! A resource value maps to the JSON type that fits it (numbers, booleans, strings; opaque
//! bytes as base64 text; object links as `"o:i"`). A node maps to an object keyed by ids:
//! an object `{"instances": {"0": {...}}}`, an instance `{"id": 0, "resources": {"1": v}}`, a
//! multiple resource `{"0": v, "1": v}`. Written values are converted to the type the model
//! gives the resource, so `"42"` or `42` both write an integer resource.

use std::collections::BTreeMap;

use cairn_lwm2m::node::{
    LwM2mNode, LwM2mObjectInstance, LwM2mResource, LwM2mResourceInstance, ResourceValue,
};
use cairn_lwm2m::{LwM2mPath, ModelRegistry, ResourceType, Value};
use serde_json::{Map, Number, Value as Json, json};

use crate::error::ApiError;

/// A value as JSON.
pub fn value_to_json(value: &Value) -> Json {
    match value {
        Value::String(s) | Value::Corelnk(s) => Json::String(s.clone()),
        Value::Integer(v) | Value::Time(v) => Json::Number((*v).into()),
        Value::UnsignedInteger(v) => Json::Number((*v).into()),
        Value::Float(v) => Number::from_f64(*v).map_or(Json::Null, Json::Number),
        Value::Boolean(v) => Json::Bool(*v),
        Value::Opaque(_) | Value::Objlnk(_) => Json::String(value.to_text()),
    }
}

fn resource_value_to_json(value: &ResourceValue) -> Json {
    match value {
        ResourceValue::Single(value) => value_to_json(value),
        ResourceValue::Multiple(values) => Json::Object(
            values
                .iter()
                .map(|(id, v)| (id.to_string(), value_to_json(v)))
                .collect(),
        ),
    }
}

fn instance_to_json(instance: &LwM2mObjectInstance) -> Json {
    let resources: Map<String, Json> = instance
        .resources
        .iter()
        .map(|(id, r)| (id.to_string(), resource_value_to_json(&r.value)))
        .collect();
    json!({ "id": instance.id, "resources": resources })
}

/// A node as JSON.
pub fn node_to_json(node: &LwM2mNode) -> Json {
    match node {
        LwM2mNode::Object(object) => {
            let instances: Map<String, Json> = object
                .instances
                .iter()
                .map(|(id, i)| (id.to_string(), instance_to_json(i)))
                .collect();
            json!({ "id": object.id, "instances": instances })
        }
        LwM2mNode::ObjectInstance(instance) => instance_to_json(instance),
        LwM2mNode::Resource(resource) => resource_value_to_json(&resource.value),
        LwM2mNode::ResourceInstance(instance) => value_to_json(&instance.value),
    }
}

/// The type the model gives a resource (`None` if the model does not know it).
pub fn resource_type(models: &ModelRegistry, object: u16, resource: u16) -> Option<ResourceType> {
    models
        .latest(object)
        .and_then(|model| model.resources.get(&resource))
        .map(|r| r.resource_type)
}

/// A JSON value converted to a resource value of type `ty`.
pub fn json_to_value(json: &Json, ty: ResourceType, path: &LwM2mPath) -> Result<Value, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_value",
            format!("the value for {path} is not a valid {}", ty.ddf_name()),
        )
    };
    let parsed = match json {
        Json::String(text) => Value::from_text(text, ty),
        Json::Bool(b) => Value::Boolean(*b).convert(ty),
        Json::Number(n) => {
            let value = if let Some(v) = n.as_i64() {
                Value::Integer(v)
            } else if let Some(v) = n.as_u64() {
                Value::UnsignedInteger(v)
            } else {
                Value::Float(n.as_f64().ok_or_else(bad)?)
            };
            value.convert(ty)
        }
        _ => return Err(bad()),
    };
    parsed.map_err(|_| bad())
}

fn typed(models: &ModelRegistry, object: u16, resource: u16) -> Result<ResourceType, ApiError> {
    match resource_type(models, object, resource) {
        Some(ResourceType::None) => Err(ApiError::bad_request(
            "not_writable",
            format!("/{object}/x/{resource} is executable, not a value"),
        )),
        Some(ty) => Ok(ty),
        None => Err(ApiError::bad_request(
            "unknown_resource",
            format!("no object model describes resource {resource} of object {object}"),
        )),
    }
}

fn json_to_resource(
    models: &ModelRegistry,
    object: u16,
    resource: u16,
    json: &Json,
    path: &LwM2mPath,
) -> Result<LwM2mResource, ApiError> {
    let ty = typed(models, object, resource)?;
    let value = match json {
        Json::Object(entries) => {
            let mut values = BTreeMap::new();
            for (id, v) in entries {
                let id: u16 = id.parse().map_err(|_| {
                    ApiError::bad_request("invalid_value", format!("{id:?} is not an instance id"))
                })?;
                values.insert(id, json_to_value(v, ty, path)?);
            }
            ResourceValue::Multiple(values)
        }
        json => ResourceValue::Single(json_to_value(json, ty, path)?),
    };
    Ok(LwM2mResource {
        id: resource,
        value,
    })
}

/// The resources of an instance from `{"resource id": value, ...}`.
pub fn json_to_instance(
    models: &ModelRegistry,
    object: u16,
    instance: u16,
    json: &Json,
) -> Result<LwM2mObjectInstance, ApiError> {
    let Json::Object(entries) = json else {
        return Err(ApiError::bad_request(
            "invalid_value",
            "an instance is an object of resource ids to values",
        ));
    };
    let mut resources = BTreeMap::new();
    for (id, value) in entries {
        let id: u16 = id.parse().map_err(|_| {
            ApiError::bad_request("invalid_value", format!("{id:?} is not a resource id"))
        })?;
        let path = LwM2mPath::Resource(object, instance, id);
        resources.insert(id, json_to_resource(models, object, id, value, &path)?);
    }
    Ok(LwM2mObjectInstance {
        id: instance,
        resources,
    })
}

/// The node a JSON value writes at `path` (an instance, a resource or a resource instance).
pub fn json_to_node(
    models: &ModelRegistry,
    path: &LwM2mPath,
    json: &Json,
) -> Result<LwM2mNode, ApiError> {
    Ok(match *path {
        LwM2mPath::ObjectInstance(o, i) => {
            LwM2mNode::ObjectInstance(json_to_instance(models, o, i, json)?)
        }
        LwM2mPath::Resource(o, _, r) => {
            LwM2mNode::Resource(json_to_resource(models, o, r, json, path)?)
        }
        LwM2mPath::ResourceInstance(o, _, r, ri) => {
            LwM2mNode::ResourceInstance(LwM2mResourceInstance {
                id: ri,
                value: json_to_value(json, typed(models, o, r)?, path)?,
            })
        }
        LwM2mPath::Root | LwM2mPath::Object(_) => {
            return Err(ApiError::bad_request(
                "invalid_path",
                "write to an object instance, a resource or a resource instance",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_object(id: u16) -> cairn_lwm2m::node::LwM2mObject {
        cairn_lwm2m::node::LwM2mObject {
            id,
            instances: BTreeMap::new(),
        }
    }

    #[test]
    fn values_map_to_json_types() {
        assert_eq!(value_to_json(&Value::Integer(-3)), json!(-3));
        assert_eq!(value_to_json(&Value::Float(1.5)), json!(1.5));
        assert_eq!(value_to_json(&Value::Float(f64::NAN)), Json::Null);
        assert_eq!(value_to_json(&Value::Boolean(true)), json!(true));
        assert_eq!(value_to_json(&Value::Opaque(vec![1, 2])), json!("AQI="));
        assert_eq!(value_to_json(&Value::String("x".into())), json!("x"));
    }

    #[test]
    fn written_values_follow_the_model() {
        let models = ModelRegistry::with_core_models();
        // /3/0/14 UTC Offset is a string, /1/0/1 Lifetime an integer, /3/0/4 Reboot executable.
        let offset = json_to_node(&models, &LwM2mPath::Resource(3, 0, 14), &json!("+02")).unwrap();
        assert!(matches!(
            offset,
            LwM2mNode::Resource(LwM2mResource {
                value: ResourceValue::Single(Value::String(_)),
                ..
            })
        ));
        let lifetime = json_to_node(&models, &LwM2mPath::Resource(1, 0, 1), &json!("60")).unwrap();
        assert!(matches!(
            lifetime,
            LwM2mNode::Resource(LwM2mResource {
                value: ResourceValue::Single(Value::Integer(60)),
                ..
            })
        ));
        assert!(json_to_node(&models, &LwM2mPath::Resource(1, 0, 1), &json!("sixty")).is_err());
        assert!(json_to_node(&models, &LwM2mPath::Resource(3, 0, 4), &json!(1)).is_err());
        assert!(json_to_node(&models, &LwM2mPath::Object(3), &json!({})).is_err());
        assert!(json_to_node(&models, &LwM2mPath::Resource(3, 0, 9999), &json!(1)).is_err());
    }

    #[test]
    fn nodes_map_to_nested_json() {
        let mut resources = BTreeMap::new();
        resources.insert(
            0,
            LwM2mResource {
                id: 0,
                value: ResourceValue::Single(Value::String("Cairn".into())),
            },
        );
        let node = LwM2mNode::ObjectInstance(LwM2mObjectInstance { id: 0, resources });
        assert_eq!(
            node_to_json(&node),
            json!({"id": 0, "resources": {"0": "Cairn"}})
        );
        assert_eq!(
            node_to_json(&LwM2mNode::Object(empty_object(3))),
            json!({"id": 3, "instances": {}})
        );
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Json> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Json::Null, Json::Number)),
            ".{0,12}".prop_map(Json::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                prop::collection::btree_map("[0-9]{1,3}|.{0,4}", inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever JSON arrives for whatever path, conversion answers (a node or an error)
        /// and never panics.
        #[test]
        fn any_json_at_any_path_converts_or_errs(
            json in arbitrary_json(),
            ids in proptest::collection::vec(0u16..20, 0..=4),
        ) {
            let models = ModelRegistry::with_core_models();
            let path = LwM2mPath::from_ids(&ids).unwrap_or(LwM2mPath::Root);
            let _ = json_to_node(&models, &path, &json);
        }

        /// An integer written as a number or as text reads back as the same number.
        #[test]
        fn integers_round_trip(n in any_i64(), as_text in proptest::bool::ANY) {
            let models = ModelRegistry::with_core_models();
            let path = LwM2mPath::Resource(1, 0, 1);
            let json = if as_text { json!(n.to_string()) } else { json!(n) };
            let node = json_to_node(&models, &path, &json).unwrap();
            proptest::prop_assert_eq!(node_to_json(&node), json!(n));
        }
    }

    fn any_i64() -> impl proptest::strategy::Strategy<Value = i64> {
        proptest::num::i64::ANY
    }
}
