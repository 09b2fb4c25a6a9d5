//! OMA DDF (Device Description File) XML parser: the object definitions of OMA LwM2M Core
//! 1.2 Appendix D, in the LWM2M.xsd (1.0) and LWM2M-v1_1.xsd (1.1, 1.2) schemas.
//!
//! Reads `<Object>` elements: ObjectID, ObjectURN, ObjectVersion, LWM2MVersion,
//! MultipleInstances, Mandatory and `<Resources>` with `<Item ID="..">` (Name, Operations,
//! MultipleInstances, Mandatory, Type, RangeEnumeration, Units, Description). DTDs are
//! refused, the input size and the node count are capped, and errors give the element and
//! its line and column.

use std::collections::BTreeMap;

use roxmltree::{Document, Node, ParsingOptions};
use thiserror::Error;

use crate::model::{ObjectModel, Operations, ResourceModel, Version};
use crate::value::ResourceType;

/// Largest DDF document accepted, in bytes.
pub const MAX_DDF_LEN: usize = 4 * 1024 * 1024;
/// Deepest element nesting accepted (object definitions nest five levels).
pub const MAX_DDF_DEPTH: usize = 32;
const MAX_XML_NODES: u32 = 500_000;

/// Why a DDF document could not be read.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum DdfError {
    /// The document is larger than [`MAX_DDF_LEN`].
    #[error("DDF document of {0} bytes exceeds the limit of {MAX_DDF_LEN}")]
    TooLarge(usize),
    /// Not well-formed XML.
    #[error("XML error: {0}")]
    Xml(String),
    /// Elements nest deeper than [`MAX_DDF_DEPTH`].
    #[error("elements nest deeper than {MAX_DDF_DEPTH} levels at {line}:{column}")]
    TooDeep {
        /// Line of the element that went too deep.
        line: u32,
        /// Column.
        column: u32,
    },
    /// No `<Object>` element.
    #[error("no <Object> element in the document")]
    NoObject,
    /// A well-formed document that is not an object definition: another root element
    /// (an index, a units list) or only `<Object ObjectType="CommonResources">`.
    #[error("not an object definition: <{0}>")]
    NotObjectDefinition(String),
    /// A required element is absent.
    #[error("missing <{element}> in <{parent}> at {line}:{column}")]
    Missing {
        /// The missing element or attribute.
        element: &'static str,
        /// Its expected parent.
        parent: &'static str,
        /// Line of the parent.
        line: u32,
        /// Column of the parent.
        column: u32,
    },
    /// An element holds a value outside its schema type.
    #[error("invalid <{element}> value {value:?} at {line}:{column}")]
    Invalid {
        /// The element or attribute.
        element: &'static str,
        /// Its text (truncated to 64 characters).
        value: String,
        /// Line.
        line: u32,
        /// Column.
        column: u32,
    },
    /// Two `<Item>`s with the same ID.
    #[error("resource {id} defined twice, at {line}:{column}")]
    DuplicateResource {
        /// Resource id.
        id: u16,
        /// Line of the second definition.
        line: u32,
        /// Column.
        column: u32,
    },
}

/// Parses every `<Object>` of a DDF document.
pub fn parse_ddf(xml: &str) -> Result<Vec<ObjectModel>, DdfError> {
    if xml.len() > MAX_DDF_LEN {
        return Err(DdfError::TooLarge(xml.len()));
    }
    if let Some(offset) = too_deep_at(xml, MAX_DDF_DEPTH) {
        let before = xml.get(..offset).unwrap_or_default();
        let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
        return Err(DdfError::TooDeep {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        });
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
    };
    let doc =
        Document::parse_with_options(xml, options).map_err(|e| DdfError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("LWM2M") {
        return Err(DdfError::NotObjectDefinition(
            root.tag_name().name().to_owned(),
        ));
    }
    let elements: Vec<Node> = root
        .children()
        .filter(|n| n.has_tag_name("Object"))
        .collect();
    let definitions: Vec<Node> = elements
        .iter()
        .copied()
        .filter(|n| {
            n.attribute("ObjectType")
                .is_none_or(|t| t == "MODefinition")
        })
        .collect();
    if definitions.is_empty() {
        return Err(
            match elements.first().and_then(|n| n.attribute("ObjectType")) {
                Some(other) => {
                    DdfError::NotObjectDefinition(format!("Object ObjectType=\"{other}\""))
                }
                None => DdfError::NoObject,
            },
        );
    }
    definitions
        .into_iter()
        .map(|n| parse_object(&doc, n))
        .collect()
}

/// The offset of the first start tag nested deeper than `limit`, found by a linear scan
/// (the XML parser recurses on nesting, so depth is checked before it runs). Comments,
/// CDATA sections, declarations and quoted attribute values are skipped; malformed markup
/// is left for the parser to report.
fn too_deep_at(xml: &str, limit: usize) -> Option<usize> {
    let bytes = xml.as_bytes();
    let find = |from: usize, pattern: &[u8]| {
        bytes
            .get(from..)?
            .windows(pattern.len())
            .position(|w| w == pattern)
            .map(|at| from + at + pattern.len())
    };
    let mut depth = 0usize;
    let mut pos = 0;
    while let Some(start) = bytes
        .get(pos..)?
        .iter()
        .position(|b| *b == b'<')
        .map(|at| pos + at)
    {
        let rest = bytes.get(start..)?;
        pos = if rest.starts_with(b"<!--") {
            find(start, b"-->")?
        } else if rest.starts_with(b"<![CDATA[") {
            find(start, b"]]>")?
        } else if rest.starts_with(b"<?") || rest.starts_with(b"<!") {
            find(start, b">")?
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            find(start, b">")?
        } else {
            let mut quote = None;
            let mut end = None;
            for (at, byte) in rest.iter().enumerate().skip(1) {
                match (quote, *byte) {
                    (None, b'"' | b'\'') => quote = Some(*byte),
                    (Some(q), b) if b == q => quote = None,
                    (None, b'>') => {
                        end = Some(at);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end?;
            if rest.get(end - 1) != Some(&b'/') {
                depth += 1;
                if depth > limit {
                    return Some(start);
                }
            }
            start + end + 1
        };
    }
    None
}

/// Parses bytes (a file's content) as a DDF document.
pub fn parse_ddf_bytes(bytes: &[u8]) -> Result<Vec<ObjectModel>, DdfError> {
    if bytes.len() > MAX_DDF_LEN {
        return Err(DdfError::TooLarge(bytes.len()));
    }
    let text = core::str::from_utf8(bytes)
        .map_err(|e| DdfError::Xml(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    parse_ddf(text.strip_prefix('\u{feff}').unwrap_or(text))
}

struct Ctx<'a, 'input> {
    doc: &'a Document<'input>,
}

impl Ctx<'_, '_> {
    fn position(&self, node: Node) -> (u32, u32) {
        let pos = self.doc.text_pos_at(node.range().start);
        (pos.row, pos.col)
    }

    fn missing(&self, element: &'static str, parent: &'static str, node: Node) -> DdfError {
        let (line, column) = self.position(node);
        DdfError::Missing {
            element,
            parent,
            line,
            column,
        }
    }

    /// An invalid value, located at the child element of that name when there is one.
    fn invalid(&self, element: &'static str, value: &str, node: Node) -> DdfError {
        let (line, column) = self.position(child(node, element).unwrap_or(node));
        DdfError::Invalid {
            element,
            value: value.chars().take(64).collect(),
            line,
            column,
        }
    }
}

fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn child_text(node: Node, name: &str) -> Option<String> {
    child(node, name).map(|c| {
        c.descendants()
            .filter(|d| d.is_text())
            .filter_map(|d| d.text())
            .collect::<String>()
            .trim()
            .to_owned()
    })
}

fn parse_object(doc: &Document, node: Node) -> Result<ObjectModel, DdfError> {
    let ctx = Ctx { doc };
    let id_text =
        child_text(node, "ObjectID").ok_or_else(|| ctx.missing("ObjectID", "Object", node))?;
    let id = parse_id(&id_text).ok_or_else(|| ctx.invalid("ObjectID", &id_text, node))?;
    let version = optional_version(&ctx, node, "ObjectVersion")?;
    let lwm2m_version = optional_version(&ctx, node, "LWM2MVersion")?;
    let multiple = multiplicity(&ctx, node)?;
    let mandatory = mandatory(&ctx, node)?;
    let mut resources = BTreeMap::new();
    if let Some(list) = child(node, "Resources") {
        for item in list.children().filter(|c| c.has_tag_name("Item")) {
            let resource = parse_resource(&ctx, item)?;
            if resources.contains_key(&resource.id) {
                let (line, column) = ctx.position(item);
                return Err(DdfError::DuplicateResource {
                    id: resource.id,
                    line,
                    column,
                });
            }
            resources.insert(resource.id, resource);
        }
    }
    Ok(ObjectModel {
        id,
        name: child_text(node, "Name").unwrap_or_default(),
        description: child_text(node, "Description1").unwrap_or_default(),
        urn: child_text(node, "ObjectURN").unwrap_or_default(),
        version,
        lwm2m_version,
        multiple,
        mandatory,
        resources,
    })
}

fn parse_resource(ctx: &Ctx, item: Node) -> Result<ResourceModel, DdfError> {
    let id_text = item
        .attribute("ID")
        .ok_or_else(|| ctx.missing("ID", "Item", item))?;
    let id = parse_id(id_text).ok_or_else(|| ctx.invalid("ID", id_text, item))?;
    let operations_text = child_text(item, "Operations").unwrap_or_default();
    let operations = Operations::from_ddf(&operations_text)
        .ok_or_else(|| ctx.invalid("Operations", &operations_text, item))?;
    let type_text = child_text(item, "Type").unwrap_or_default();
    let resource_type =
        ResourceType::from_ddf(&type_text).ok_or_else(|| ctx.invalid("Type", &type_text, item))?;
    Ok(ResourceModel {
        id,
        name: child_text(item, "Name").unwrap_or_default(),
        operations,
        multiple: multiplicity(ctx, item)?,
        mandatory: mandatory(ctx, item)?,
        resource_type,
        range_enumeration: child_text(item, "RangeEnumeration").unwrap_or_default(),
        units: child_text(item, "Units").unwrap_or_default(),
        description: child_text(item, "Description").unwrap_or_default(),
    })
}

fn parse_id(text: &str) -> Option<u16> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn optional_version(ctx: &Ctx, node: Node, element: &'static str) -> Result<Version, DdfError> {
    match child_text(node, element) {
        None => Ok(Version::V1_0),
        Some(text) if text.is_empty() => Ok(Version::V1_0),
        Some(text) => text.parse().map_err(|_| ctx.invalid(element, &text, node)),
    }
}

fn multiplicity(ctx: &Ctx, node: Node) -> Result<bool, DdfError> {
    let text = child_text(node, "MultipleInstances").unwrap_or_default();
    match text.to_ascii_lowercase().as_str() {
        "multiple" => Ok(true),
        "single" | "" => Ok(false),
        _ => Err(ctx.invalid("MultipleInstances", &text, node)),
    }
}

fn mandatory(ctx: &Ctx, node: Node) -> Result<bool, DdfError> {
    let text = child_text(node, "Mandatory").unwrap_or_default();
    match text.to_ascii_lowercase().as_str() {
        "mandatory" => Ok(true),
        "optional" | "" => Ok(false),
        _ => Err(ctx.invalid("Mandatory", &text, node)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINIMAL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<LWM2M xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <Object ObjectType="MODefinition">
    <Name>Example</Name>
    <Description1>An example</Description1>
    <ObjectID>3442</ObjectID>
    <ObjectURN>urn:oma:lwm2m:x:3442:1.1</ObjectURN>
    <LWM2MVersion>1.1</LWM2MVersion>
    <ObjectVersion>1.1</ObjectVersion>
    <MultipleInstances>Single</MultipleInstances>
    <Mandatory>Optional</Mandatory>
    <Resources>
      <Item ID="110">
        <Name>String Value</Name><Operations>RW</Operations>
        <MultipleInstances>Single</MultipleInstances><Mandatory>Mandatory</Mandatory>
        <Type>String</Type><RangeEnumeration>0..255</RangeEnumeration><Units/>
        <Description>A string</Description>
      </Item>
      <Item ID="1110">
        <Name>Multi Unsigned</Name><Operations>R</Operations>
        <MultipleInstances>Multiple</MultipleInstances><Mandatory>Optional</Mandatory>
        <Type>Unsigned Integer</Type><RangeEnumeration></RangeEnumeration><Units>s</Units>
        <Description></Description>
      </Item>
      <Item ID="4">
        <Name>Reboot</Name><Operations>E</Operations>
        <MultipleInstances>Single</MultipleInstances><Mandatory>Mandatory</Mandatory>
        <Type></Type><RangeEnumeration></RangeEnumeration><Units></Units><Description/>
      </Item>
    </Resources>
    <Description2></Description2>
  </Object>
</LWM2M>"#;

    #[test]
    fn parses_a_1_1_object() {
        let objects = parse_ddf(MINIMAL).expect("valid DDF");
        let object = &objects[0];
        assert_eq!(object.id, 3442);
        assert_eq!(object.version, Version::V1_1);
        assert_eq!(object.lwm2m_version, Version::V1_1);
        assert!(!object.multiple && !object.mandatory);
        assert_eq!(object.resources.len(), 3);
        let multi = &object.resources[&1110];
        assert_eq!(multi.resource_type, ResourceType::UnsignedInteger);
        assert!(multi.multiple);
        assert_eq!(multi.units, "s");
        assert_eq!(object.resources[&4].operations, Operations::E);
        assert_eq!(object.resources[&4].resource_type, ResourceType::None);
        assert_eq!(object.resources[&110].range_enumeration, "0..255");
    }

    #[test]
    fn errors_name_the_element_and_position() {
        let bad_type = MINIMAL.replace("<Type>String</Type>", "<Type>Text</Type>");
        assert!(matches!(
            parse_ddf(&bad_type),
            Err(DdfError::Invalid {
                element: "Type",
                line: 16,
                column: 9,
                ..
            })
        ));
        let no_id = MINIMAL.replace("<ObjectID>3442</ObjectID>", "");
        assert!(matches!(
            parse_ddf(&no_id),
            Err(DdfError::Missing {
                element: "ObjectID",
                ..
            })
        ));
        let dup = MINIMAL.replace("Item ID=\"1110\"", "Item ID=\"110\"");
        assert!(matches!(
            parse_ddf(&dup),
            Err(DdfError::DuplicateResource { id: 110, .. })
        ));
        assert!(matches!(parse_ddf("<LWM2M/>"), Err(DdfError::NoObject)));
        assert!(matches!(
            parse_ddf("<DDFList/>"),
            Err(DdfError::NotObjectDefinition(_))
        ));
        let common = "<LWM2M><Object ObjectType=\"CommonResources\"/></LWM2M>";
        assert!(matches!(
            parse_ddf(common),
            Err(DdfError::NotObjectDefinition(_))
        ));
        assert!(matches!(parse_ddf("<LWM2M>"), Err(DdfError::Xml(_))));
    }

    #[test]
    fn deep_nesting_is_refused_or_parsed_without_recursion() {
        let depth = 100_000;
        let deep = format!(
            "<LWM2M>{}{}</LWM2M>",
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        );
        assert!(parse_ddf(&deep).is_err());
    }

    #[test]
    fn refuses_dtds_entities_and_oversize_input() {
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaa\">]><LWM2M>&a;</LWM2M>";
        assert!(matches!(parse_ddf(bomb), Err(DdfError::Xml(_))));
        let huge = " ".repeat(MAX_DDF_LEN + 1);
        assert!(matches!(parse_ddf(&huge), Err(DdfError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_ddf_bytes(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_definitions(cut in 0usize..1400, insert in "[<>/a-zA-Z0-9 \"=&;]{0,12}") {
            let mut text = MINIMAL.to_owned();
            let at = cut.min(text.len());
            if text.is_char_boundary(at) {
                text.insert_str(at, &insert);
            }
            let _ = parse_ddf(&text);
        }
    }
}
