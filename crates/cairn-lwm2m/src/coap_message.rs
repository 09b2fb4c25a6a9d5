//! Conversions between the LwM2M request/response parts ([`CoapRequest`], [`CoapResponse`])
//! and CoAP messages of `cairn-coap` (LwM2M Transport Binding 1.2 §6.4: the operations are
//! CoAP methods, Uri-Path, Uri-Query, Content-Format, Accept, Observe and Location-Path).

use cairn_coap::option::decode_uint;
use cairn_coap::{Code, ContentFormat, Message, OptionNumber};

use crate::coap::{CoapRequest, CoapResponse, Method, ResponseCode};

/// Why a CoAP message is not an LwM2M request or response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("code {0} is not a request method LwM2M uses")]
    Method(Code),
    #[error("code {0} is not a response code")]
    ResponseCode(Code),
    #[error("{option} is not valid UTF-8")]
    Utf8 { option: &'static str },
    #[error("{option} value is not an unsigned integer of at most 4 bytes")]
    Uint { option: &'static str },
}

impl Method {
    /// The CoAP code of this method.
    pub fn code(self) -> Code {
        match self {
            Method::Get => Code::GET,
            Method::Post => Code::POST,
            Method::Put => Code::PUT,
            Method::Delete => Code::DELETE,
            Method::Fetch => Code::FETCH,
            Method::Patch => Code::PATCH,
            Method::IPatch => Code::IPATCH,
        }
    }

    /// The method of a CoAP request code.
    pub fn from_code(code: Code) -> Option<Method> {
        Some(match code {
            Code::GET => Method::Get,
            Code::POST => Method::Post,
            Code::PUT => Method::Put,
            Code::DELETE => Method::Delete,
            Code::FETCH => Method::Fetch,
            Code::PATCH => Method::Patch,
            Code::IPATCH => Method::IPatch,
            _ => return None,
        })
    }
}

impl ResponseCode {
    /// The CoAP code of this response code.
    pub fn code(self) -> Code {
        Code::new(self.class, self.detail)
    }

    /// The response code of a CoAP code, if it is one.
    pub fn from_code(code: Code) -> Option<ResponseCode> {
        code.is_response()
            .then(|| ResponseCode::new(code.class(), code.detail()))
    }
}

fn strings(
    message: &Message,
    number: OptionNumber,
    option: &'static str,
) -> Result<Vec<String>, MessageError> {
    message
        .options
        .get_all(number)
        .map(|v| String::from_utf8(v.to_vec()).map_err(|_| MessageError::Utf8 { option }))
        .collect()
}

fn format_option(
    message: &Message,
    number: OptionNumber,
    option: &'static str,
) -> Result<Option<ContentFormat>, MessageError> {
    match message.options.get(number) {
        None => Ok(None),
        Some(raw) => {
            let value = decode_uint(raw)
                .and_then(|v| u16::try_from(v).ok())
                .ok_or(MessageError::Uint { option })?;
            Ok(Some(ContentFormat(value)))
        }
    }
}

fn observe_option(message: &Message) -> Result<Option<u32>, MessageError> {
    message
        .options
        .get(OptionNumber::OBSERVE)
        .map(|raw| decode_uint(raw).ok_or(MessageError::Uint { option: "Observe" }))
        .transpose()
}

impl CoapRequest {
    /// The CoAP request for these parts; the endpoint fills in type, message ID and token.
    pub fn to_message(&self) -> Message {
        let mut message = Message::request(self.method.code());
        for segment in &self.path {
            message
                .options
                .push(OptionNumber::URI_PATH, segment.as_bytes());
        }
        for query in &self.queries {
            message
                .options
                .push(OptionNumber::URI_QUERY, query.as_bytes());
        }
        if let Some(format) = self.content_format {
            message.set_content_format(format);
        }
        if let Some(accept) = self.accept {
            message
                .options
                .set_uint(OptionNumber::ACCEPT, u32::from(accept.value()));
        }
        if let Some(observe) = self.observe {
            message.options.set_uint(OptionNumber::OBSERVE, observe);
        }
        message.payload.clone_from(&self.payload);
        message
    }

    /// The parts of a received CoAP request.
    pub fn from_message(message: &Message) -> Result<CoapRequest, MessageError> {
        Ok(CoapRequest {
            method: Method::from_code(message.code).ok_or(MessageError::Method(message.code))?,
            path: strings(message, OptionNumber::URI_PATH, "Uri-Path")?,
            queries: strings(message, OptionNumber::URI_QUERY, "Uri-Query")?,
            content_format: format_option(message, OptionNumber::CONTENT_FORMAT, "Content-Format")?,
            accept: format_option(message, OptionNumber::ACCEPT, "Accept")?,
            observe: observe_option(message)?,
            payload: message.payload.clone(),
        })
    }
}

impl CoapResponse {
    /// The CoAP response for these parts; the endpoint fills in type, message ID and token.
    pub fn to_message(&self) -> Message {
        let mut message = Message::response(self.code.code());
        for segment in &self.location_path {
            message
                .options
                .push(OptionNumber::LOCATION_PATH, segment.as_bytes());
        }
        if let Some(format) = self.content_format {
            message.set_content_format(format);
        }
        if let Some(observe) = self.observe {
            message.options.set_uint(OptionNumber::OBSERVE, observe);
        }
        message.payload.clone_from(&self.payload);
        message
    }

    /// The parts of a received CoAP response.
    pub fn from_message(message: &Message) -> Result<CoapResponse, MessageError> {
        Ok(CoapResponse {
            code: ResponseCode::from_code(message.code)
                .ok_or(MessageError::ResponseCode(message.code))?,
            content_format: format_option(message, OptionNumber::CONTENT_FORMAT, "Content-Format")?,
            observe: observe_option(message)?,
            location_path: strings(message, OptionNumber::LOCATION_PATH, "Location-Path")?,
            payload: message.payload.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_messages() {
        let mut request = CoapRequest::new(Method::Post, &["rd"]);
        request.queries = vec!["ep=device-1".into(), "lt=300".into(), "b=U".into()];
        request.content_format = Some(ContentFormat::LINK_FORMAT);
        request.payload = b"</1/0>,</3/0>".to_vec();
        let message = request.to_message();
        assert_eq!(message.code, Code::POST);
        assert_eq!(message.uri_path(), "/rd");
        let decoded =
            CoapRequest::from_message(&Message::decode(&message.to_bytes()).unwrap()).unwrap();
        assert_eq!(decoded, request);
    }

    #[test]
    fn responses_round_trip_through_messages() {
        let mut response = CoapResponse::new(ResponseCode::CREATED);
        response.location_path = vec!["rd".into(), "a1b2".into()];
        let decoded = CoapResponse::from_message(&response.to_message()).unwrap();
        assert_eq!(decoded, response);
    }

    #[test]
    fn bad_messages_are_errors() {
        let mut message = Message::request(Code::GET);
        message.options.push(OptionNumber::URI_PATH, vec![0xff]);
        assert_eq!(
            CoapRequest::from_message(&message),
            Err(MessageError::Utf8 { option: "Uri-Path" })
        );
        let message = Message::response(Code::new(0, 9));
        assert!(CoapResponse::from_message(&message).is_err());
    }
}
