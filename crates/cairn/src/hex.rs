//! Hexadecimal text for keys on the command line.

use anyhow::Context;

/// Decodes hexadecimal digits (either case, surrounding whitespace ignored).
pub fn decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let text = text.trim();
    anyhow::ensure!(text.len() % 2 == 0, "odd number of hex digits");
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let pair = text.get(i..i + 2).context("not ASCII")?;
            u8::from_str_radix(pair, 16).with_context(|| format!("invalid hex digits {pair:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_and_rejects() {
        assert_eq!(super::decode("00fFa0").unwrap(), vec![0, 255, 160]);
        assert!(super::decode("abc").is_err());
        assert!(super::decode("zz").is_err());
    }
}
