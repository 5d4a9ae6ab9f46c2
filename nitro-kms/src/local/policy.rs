//! Key policies: the subset of the IAM policy language the local KMS evaluates.
//!
//! Supported: `Version`, `Id`, `Statement` (object or array) with `Sid`, `Effect`
//! (`Allow`/`Deny`), `Principal` (`"*"`, `{"AWS": …}` with `*`, an account id, the account's
//! `:root` ARN or a principal ARN; as in IAM, a wildcard inside a principal ARN makes the
//! policy malformed), `Action` (string or list; `*` and `?` wildcards,
//! case-insensitive), `Resource` (`*` or the key ARN, wildcards allowed), and `Condition` with
//! the operators `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//! `StringNotEqualsIgnoreCase`, `StringLike`, `StringNotLike`, `Bool`, `Null`, each also with
//! the `IfExists` suffix. Condition keys: `kms:RecipientAttestation:ImageSha384` and
//! `kms:RecipientAttestation:PCR<n>` (from a Nitro Enclaves document in `Recipient`),
//! `kms:RecipientAttestation:NitroTPMPCR<n>` (from a NitroTPM document),
//! `kms:EncryptionContext:<key>`, `kms:CallerAccount`,
//! `kms:KeySpec`, `kms:KeyUsage`, `aws:PrincipalArn`. Anything else (`NotAction`, `NotPrincipal`, `NotResource`, unknown
//! operators, `ForAnyValue:`…) makes the policy malformed, so that a policy never means less
//! than it says.
//!
//! Evaluation follows IAM: an explicit `Deny` wins, otherwise at least one `Allow` must match,
//! otherwise access is denied. A condition key absent from the request fails every operator
//! except the negated ones, `Null: true` and the `IfExists` forms.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::Error;

/// Largest policy document accepted (KMS's limit).
pub const MAX_POLICY_LEN: usize = 32 * 1024;

/// A parsed key policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    statements: Vec<Statement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Statement {
    allow: bool,
    principals: Option<Vec<String>>, // None = "*"
    actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Condition {
    op: Op,
    if_exists: bool,
    key: String,
    values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    Bool,
    Null,
}

/// Who is asking, for what, on which key, with which request context.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RequestContext {
    /// Caller principal ARN.
    pub principal_arn: String,
    /// Caller account id.
    pub account_id: String,
    /// `kms:<Operation>`.
    pub action: String,
    /// The key ARN.
    pub resource: String,
    /// Condition keys (lower-cased names, except the encryption-context key suffix) → value.
    pub keys: BTreeMap<String, String>,
}

impl RequestContext {
    /// A context with no condition keys.
    pub fn new(
        principal_arn: impl Into<String>,
        account_id: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        Self {
            principal_arn: principal_arn.into(),
            account_id: account_id.into(),
            action: action.into(),
            resource: resource.into(),
            keys: BTreeMap::new(),
        }
    }

    /// Adds a condition key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.keys.insert(normalize_key(key), value.into());
    }
}

/// The outcome of evaluating a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// An `Allow` statement matched and no `Deny` did.
    Allow,
    /// No statement allowed the request.
    ImplicitDeny,
    /// A `Deny` statement matched.
    ExplicitDeny,
}

fn normalize_key(key: &str) -> String {
    const EC: &str = "kms:encryptioncontext:";
    let lower = key.to_ascii_lowercase();
    if lower.starts_with(EC) && key.len() > EC.len() {
        // The context key name itself is case-sensitive.
        format!("{EC}{}", key.get(EC.len()..).unwrap_or(""))
    } else {
        lower
    }
}

fn malformed(why: impl Into<String>) -> Error {
    Error::Policy(why.into())
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, Error> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => Err(malformed(format!("{what}: expected strings"))),
            })
            .collect(),
        Value::Bool(b) => Ok(vec![b.to_string()]),
        _ => Err(malformed(format!(
            "{what}: expected a string or a list of strings"
        ))),
    }
}

impl KeyPolicy {
    /// Parses a policy document.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_POLICY_LEN {
            return Err(malformed("policy larger than 32 KiB"));
        }
        let doc: Value =
            serde_json::from_str(text).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| malformed("not a JSON object"))?;
        for k in obj.keys() {
            if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
                return Err(malformed(format!("unsupported policy element {k}")));
            }
        }
        let statements = match obj.get("Statement") {
            Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
            Some(s @ Value::Object(_)) => vec![s],
            _ => return Err(malformed("Statement must be an object or a list")),
        };
        if statements.is_empty() {
            return Err(malformed("no Statement"));
        }
        let statements = statements
            .into_iter()
            .map(Statement::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { statements })
    }

    /// Evaluates the policy for a request.
    pub fn evaluate(&self, ctx: &RequestContext) -> Decision {
        let mut allowed = false;
        for s in &self.statements {
            if s.matches(ctx) {
                if !s.allow {
                    return Decision::ExplicitDeny;
                }
                allowed = true;
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }
}

impl Statement {
    fn parse(v: &Value) -> Result<Self, Error> {
        let obj = v
            .as_object()
            .ok_or_else(|| malformed("a Statement is not an object"))?;
        for k in obj.keys() {
            if !matches!(
                k.as_str(),
                "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition"
            ) {
                return Err(malformed(format!(
                    "unsupported statement element {k} (the local KMS does not evaluate it)"
                )));
            }
        }
        let allow = match obj.get("Effect").and_then(Value::as_str) {
            Some("Allow") => true,
            Some("Deny") => false,
            _ => return Err(malformed("Effect must be Allow or Deny")),
        };
        let principals = match obj.get("Principal") {
            Some(Value::String(s)) if s == "*" => None,
            Some(Value::Object(p)) => {
                let mut out = Vec::new();
                for (kind, v) in p {
                    if kind != "AWS" {
                        return Err(malformed(format!("unsupported principal type {kind}")));
                    }
                    out.extend(strings(v, "Principal")?);
                }
                // IAM forbids wildcards inside a principal: `arn:aws:iam::*:role/app-*` would
                // otherwise admit any account's roles.
                if let Some(p) = out
                    .iter()
                    .find(|p| p.as_str() != "*" && (p.contains('*') || p.contains('?')))
                {
                    return Err(malformed(format!(
                        "Principal {p}: a wildcard may only stand for the whole principal (\"*\")"
                    )));
                }
                if out.iter().any(|p| p == "*") {
                    None
                } else {
                    Some(out)
                }
            }
            _ => return Err(malformed("Principal must be \"*\" or {\"AWS\": …}")),
        };
        let actions = strings(
            obj.get("Action").ok_or_else(|| malformed("no Action"))?,
            "Action",
        )?;
        let resources = match obj.get("Resource") {
            Some(r) => strings(r, "Resource")?,
            None => return Err(malformed("no Resource")),
        };
        let mut conditions = Vec::new();
        if let Some(c) = obj.get("Condition") {
            let c = c
                .as_object()
                .ok_or_else(|| malformed("Condition must be an object"))?;
            for (op_name, block) in c {
                let (base, if_exists) = match op_name.strip_suffix("IfExists") {
                    Some(b) => (b, true),
                    None => (op_name.as_str(), false),
                };
                let op = match base {
                    "StringEquals" => Op::StringEquals,
                    "StringNotEquals" => Op::StringNotEquals,
                    "StringEqualsIgnoreCase" => Op::StringEqualsIgnoreCase,
                    "StringNotEqualsIgnoreCase" => Op::StringNotEqualsIgnoreCase,
                    "StringLike" => Op::StringLike,
                    "StringNotLike" => Op::StringNotLike,
                    "Bool" => Op::Bool,
                    "Null" => Op::Null,
                    other => {
                        return Err(malformed(format!("unsupported condition operator {other}")));
                    }
                };
                let block = block
                    .as_object()
                    .ok_or_else(|| malformed(format!("{op_name} must be an object")))?;
                for (key, values) in block {
                    let values = strings(values, op_name)?;
                    if values.is_empty() {
                        return Err(malformed(format!("{op_name} {key}: no values")));
                    }
                    conditions.push(Condition {
                        op,
                        if_exists,
                        key: normalize_key(key),
                        values,
                    });
                }
            }
        }
        Ok(Self {
            allow,
            principals,
            actions,
            resources,
            conditions,
        })
    }

    fn matches(&self, ctx: &RequestContext) -> bool {
        let principal_ok = match &self.principals {
            None => true,
            Some(ps) => ps.iter().any(|p| {
                p == &ctx.account_id
                    || *p == format!("arn:aws:iam::{}:root", ctx.account_id)
                    || *p == ctx.principal_arn
            }),
        };
        principal_ok
            && self.actions.iter().any(|a| glob(a, &ctx.action, true))
            && self.resources.iter().any(|r| glob(r, &ctx.resource, false))
            && self.conditions.iter().all(|c| c.holds(ctx))
    }
}

impl Condition {
    fn holds(&self, ctx: &RequestContext) -> bool {
        let value = ctx.keys.get(&self.key);
        if self.op == Op::Null {
            let want_absent = self.values.iter().any(|v| v.eq_ignore_ascii_case("true"));
            return want_absent == value.is_none();
        }
        let Some(value) = value else {
            return self.if_exists
                || matches!(
                    self.op,
                    Op::StringNotEquals | Op::StringNotEqualsIgnoreCase | Op::StringNotLike
                );
        };
        let any = |f: &dyn Fn(&str) -> bool| self.values.iter().any(|v| f(v));
        match self.op {
            Op::StringEquals => any(&|v| v == value),
            Op::StringNotEquals => !any(&|v| v == value),
            Op::StringEqualsIgnoreCase => any(&|v| v.eq_ignore_ascii_case(value)),
            Op::StringNotEqualsIgnoreCase => !any(&|v| v.eq_ignore_ascii_case(value)),
            Op::StringLike => any(&|v| glob(v, value, false)),
            Op::StringNotLike => !any(&|v| glob(v, value, false)),
            Op::Bool => any(&|v| v.eq_ignore_ascii_case(value)),
            Op::Null => false,
        }
    }
}

/// IAM wildcard matching: `*` any run, `?` one character. Iterative, linear in practice.
fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if ignore_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || t.get(ti).is_some_and(|&x| eq(c, x)) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// The default key policy KMS attaches when `CreateKey` has none: the account's root (and so
/// every caller of the account) may use the key for everything.
pub fn default_policy(account_id: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account_id}:root")},
            "Action": "kms:*",
            "Resource": "*"
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(action: &str, keys: &[(&str, &str)]) -> RequestContext {
        let mut c = RequestContext {
            principal_arn: "arn:aws:iam::111122223333:user/app".into(),
            account_id: "111122223333".into(),
            action: action.into(),
            resource: "arn:aws:kms:eu-west-1:111122223333:key/k".into(),
            keys: BTreeMap::new(),
        };
        for (k, v) in keys {
            c.set(k, *v);
        }
        c
    }

    const PCR0: &str = "aa";

    fn pcr_policy() -> KeyPolicy {
        KeyPolicy::parse(&format!(
            r#"{{"Version":"2012-10-17","Statement":[
              {{"Sid":"admin","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::111122223333:root"}},
                "Action":["kms:Create*","kms:Put*","kms:Get*","kms:Describe*","kms:Encrypt"],"Resource":"*"}},
              {{"Sid":"enclave","Effect":"Allow","Principal":"*","Action":["kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*",
                "Condition":{{"StringEqualsIgnoreCase":{{"kms:RecipientAttestation:ImageSha384":"{PCR0}"}}}}}}
            ]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn recipient_conditions() {
        let p = pcr_policy();
        let ok = [("kms:RecipientAttestation:ImageSha384", "AA")];
        assert_eq!(p.evaluate(&ctx("kms:Decrypt", &ok)), Decision::Allow);
        assert_eq!(
            p.evaluate(&ctx("kms:GenerateDataKey", &ok)),
            Decision::Allow
        );
        let bad = [("kms:RecipientAttestation:ImageSha384", "bb")];
        assert_eq!(
            p.evaluate(&ctx("kms:Decrypt", &bad)),
            Decision::ImplicitDeny
        );
        // No Recipient: the key is absent, the condition fails.
        assert_eq!(p.evaluate(&ctx("kms:Decrypt", &[])), Decision::ImplicitDeny);
        assert_eq!(p.evaluate(&ctx("kms:encrypt", &[])), Decision::Allow);
        assert_eq!(
            p.evaluate(&ctx("kms:ScheduleKeyDeletion", &[])),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn explicit_deny_wins_and_operators() {
        let p = KeyPolicy::parse(
            r#"{"Statement":[
              {"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"},
              {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
               "Condition":{"StringNotEquals":{"kms:RecipientAttestation:PCR8":["01","02"]}}}]}"#,
        )
        .unwrap();
        assert_eq!(p.evaluate(&ctx("kms:Decrypt", &[])), Decision::ExplicitDeny);
        assert_eq!(
            p.evaluate(&ctx(
                "kms:Decrypt",
                &[("kms:RecipientAttestation:PCR8", "02")]
            )),
            Decision::Allow
        );
        let p = KeyPolicy::parse(
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*",
               "Condition":{"Null":{"kms:RecipientAttestation:ImageSha384":"false"},
                            "StringLike":{"kms:EncryptionContext:App":"db-*"},
                            "StringEqualsIfExists":{"kms:RecipientAttestation:PCR3":"03"}}}}"#,
        )
        .unwrap();
        let base = [
            ("kms:RecipientAttestation:ImageSha384", "00"),
            ("kms:EncryptionContext:App", "db-prod"),
        ];
        assert_eq!(p.evaluate(&ctx("kms:Decrypt", &base)), Decision::Allow);
        assert_eq!(
            p.evaluate(&ctx(
                "kms:Decrypt",
                &[("kms:EncryptionContext:App", "db-prod")]
            )),
            Decision::ImplicitDeny
        );
        // The encryption-context key name is case-sensitive.
        assert_eq!(
            p.evaluate(&ctx(
                "kms:Decrypt",
                &[
                    ("kms:RecipientAttestation:ImageSha384", "00"),
                    ("kms:EncryptionContext:app", "db-prod")
                ]
            )),
            Decision::ImplicitDeny
        );
        let mut with_pcr3 = base.to_vec();
        with_pcr3.push(("kms:RecipientAttestation:PCR3", "04"));
        assert_eq!(
            p.evaluate(&ctx("kms:Decrypt", &with_pcr3)),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn principals() {
        let p = KeyPolicy::parse(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::111122223333:user/other"]},"Action":"kms:*","Resource":"*"}]}"#,
        )
        .unwrap();
        assert_eq!(p.evaluate(&ctx("kms:Decrypt", &[])), Decision::ImplicitDeny);
        let p = KeyPolicy::parse(&default_policy("111122223333")).unwrap();
        assert_eq!(p.evaluate(&ctx("kms:Decrypt", &[])), Decision::Allow);
        let mut other_account = ctx("kms:Decrypt", &[]);
        other_account.account_id = "999".into();
        other_account.principal_arn = "arn:aws:iam::999:user/x".into();
        assert_eq!(p.evaluate(&other_account), Decision::ImplicitDeny);
    }

    #[test]
    fn malformed_policies() {
        for text in [
            "",
            "[]",
            r#"{"Statement":[]}"#,
            r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","NotAction":"kms:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericEquals":{"a":"1"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"ForAnyValue:StringEquals":{"a":"1"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"x"},"Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":7,"Resource":"*"}]}"#,
        ] {
            assert!(KeyPolicy::parse(text).is_err(), "{text}");
        }
    }

    /// Issue 20 item 6: partial wildcards in principals are refused, not matched.
    #[test]
    fn partial_principal_wildcards_are_malformed() {
        for principal in [
            r#""arn:aws:iam::*:role/app-*""#,
            r#""arn:aws:iam::111122223333:role/app-*""#,
            r#"["arn:aws:iam::111122223333:root", "arn:aws:iam::?????????????:root"]"#,
            r#""1111222233*""#,
        ] {
            let text = format!(
                r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"AWS":{principal}}},"Action":"kms:*","Resource":"*"}}]}}"#
            );
            assert!(KeyPolicy::parse(&text).is_err(), "{text}");
        }
        // The whole-principal wildcard and exact ARNs stay valid; an exact ARN matches only
        // itself.
        let p = KeyPolicy::parse(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::111122223333:user/app"]},"Action":"kms:*","Resource":"*"}]}"#,
        )
        .unwrap();
        assert_eq!(p.evaluate(&ctx("kms:Decrypt", &[])), Decision::Allow);
        let mut other = ctx("kms:Decrypt", &[]);
        other.principal_arn = "arn:aws:iam::111122223333:user/app2".into();
        assert_eq!(p.evaluate(&other), Decision::ImplicitDeny);
        assert!(
            KeyPolicy::parse(
                r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn globbing() {
        assert!(glob("kms:*", "kms:Decrypt", true));
        assert!(glob("KMS:decrypt", "kms:Decrypt", true));
        assert!(glob("kms:Generate*", "kms:GenerateDataKeyPair", true));
        assert!(!glob("kms:Generate*", "kms:Decrypt", true));
        assert!(glob("a?c", "abc", false));
        assert!(glob("*", "", false));
        assert!(!glob("a", "", false));
        assert!(glob("*a*b*", "xxaxxbxx", false));
        assert!(!glob("*a*b", "xxaxxbxx", false));
    }
}
