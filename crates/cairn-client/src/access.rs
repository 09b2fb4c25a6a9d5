//! Access control between several servers (OMA LwM2M Core 1.2 §7.3.2 "Access Control" and
//! Appendix E.3, object 2): each Access Control object instance names an object instance
//! (or, with instance 65535, an object for Create), the rights of each Short Server ID
//! (ACL resource instances: bit 0 Read, 1 Write, 2 Execute, 3 Delete, 4 Create; instance 0
//! is the default for servers without their own entry) and its owner.
//!
//! With a single server there is nothing to arbitrate and every operation is allowed; a
//! server always reaches its own Server object instance.

use cairn_lwm2m::{LwM2mNode, LwM2mPath, ResourceValue, Value};

use crate::object::ObjectError;
use crate::objects::ids;
use crate::tree::ObjectTree;

/// An access right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Read, Observe, Discover, Write-Attributes.
    Read = 1,
    /// Write.
    Write = 2,
    /// Execute.
    Execute = 4,
    /// Delete.
    Delete = 8,
    /// Create.
    Create = 16,
}

/// The instance id an Access Control entry uses for "the object itself" (Create rights).
const OBJECT_LEVEL: i64 = 65535;

/// Checks that `short_server_id` holds `right` on `path`, when the client has
/// `server_count` servers.
pub fn check(
    tree: &ObjectTree,
    server_count: usize,
    short_server_id: u16,
    path: &LwM2mPath,
    right: Right,
) -> Result<(), ObjectError> {
    let Some(object_id) = path.object_id() else {
        return Ok(());
    };
    // The Access Control object is managed by the Bootstrap-Server; object-level reads
    // and discovers are answered with what the server may see.
    if server_count <= 1 || object_id == ids::ACCESS_CONTROL {
        return Ok(());
    }
    if object_id == ids::SERVER {
        // A server reaches its own Server object instance and no other (§7.3.2).
        return match path.instance_id() {
            Some(instance) if tree.short_server_id(instance) == Some(short_server_id) => Ok(()),
            None if right == Right::Read => Ok(()),
            _ => Err(ObjectError::Unauthorized),
        };
    }
    let target = match (path.instance_id(), right) {
        (_, Right::Create) => OBJECT_LEVEL,
        (Some(instance), _) => i64::from(instance),
        (None, _) => return Ok(()),
    };
    let entry = entries(tree).find(|e| e.object == i64::from(object_id) && e.instance == target);
    let Some(entry) = entry else {
        return Err(ObjectError::Unauthorized);
    };
    let own = entry.acl.iter().find(|(id, _)| *id == short_server_id);
    let rights = match own {
        Some((_, rights)) => *rights,
        None if entry.owner == i64::from(short_server_id) => 0x1f,
        None => entry
            .acl
            .iter()
            .find(|(id, _)| *id == 0)
            .map_or(0, |(_, r)| *r),
    };
    if rights & right as i64 == 0 {
        return Err(ObjectError::Unauthorized);
    }
    Ok(())
}

struct Entry {
    object: i64,
    instance: i64,
    acl: Vec<(u16, i64)>,
    owner: i64,
}

fn entries(tree: &ObjectTree) -> impl Iterator<Item = Entry> {
    let object = tree.read(&LwM2mPath::Object(ids::ACCESS_CONTROL)).ok();
    let instances = match object {
        Some(LwM2mNode::Object(object)) => object.instances.into_values().collect(),
        _ => Vec::new(),
    };
    instances.into_iter().filter_map(|instance| {
        let integer = |id: u16| match instance.resources.get(&id).map(|r| &r.value) {
            Some(ResourceValue::Single(Value::Integer(v))) => Some(*v),
            Some(ResourceValue::Single(Value::UnsignedInteger(v))) => i64::try_from(*v).ok(),
            _ => None,
        };
        let acl = match instance.resources.get(&2).map(|r| &r.value) {
            Some(ResourceValue::Multiple(values)) => values
                .iter()
                .filter_map(|(id, value)| match value {
                    Value::Integer(v) => Some((*id, *v)),
                    Value::UnsignedInteger(v) => Some((*id, i64::try_from(*v).ok()?)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(Entry {
            object: integer(0)?,
            instance: integer(1)?,
            acl,
            owner: integer(3)?,
        })
    })
}
