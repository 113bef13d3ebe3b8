//! `api keys create|list|revoke`: key management from the command line,
//! against the same database the instances use (the environment and
//! `.env` choose it, as for `api` itself). Migrations run first, so this
//! works on a fresh database too.
//!
//! `create` prints the key alone on stdout (`KEY=$(api keys create --name
//! ci)` works) and what it is on stderr; it is never shown again.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use crate::config::Env;
use crate::gateway::keys;
use crate::server::EXIT_CONFIG;
use crate::store::keys::{ApiKey, CreateKeyError};
use crate::store::{DbConfig, Store, StoreError};

/// What `api keys` was asked to do.
#[derive(Debug, Clone)]
pub enum KeysAction {
    Create { name: String },
    List,
    Revoke { name_or_id: String },
}

/// A key's name: what `revoke` and listings refer to it by.
pub fn check_key_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("a key name is 1-64 letters, digits, '-', '_' or '.'".into())
    }
}

/// Creates a key named `name`: the secret (show it once) and its row.
pub async fn create_key(store: &Store, name: &str) -> Result<(String, ApiKey), CreateKeyError> {
    let new = keys::generate();
    let row = store.create_key(name, &new.prefix, &new.hash).await?;
    Ok((new.plaintext, row))
}

/// Runs one `api keys` action; the exit status says how it went.
pub fn keys_main(env: &Env, action: KeysAction) -> ExitCode {
    let db = match DbConfig::from_env(env) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("api: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let KeysAction::Create { name } = &action
        && let Err(why) = check_key_name(name)
    {
        eprintln!("api: invalid --name {name:?}: {why}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("api: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let described = db.describe();
        let store = match Store::open(db) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("api: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = store.migrate().await {
            eprintln!("api: cannot prepare the database {described}: {e}");
            return ExitCode::FAILURE;
        }
        let code = run(&store, action).await;
        store.close().await;
        code
    })
}

async fn run(store: &Store, action: KeysAction) -> ExitCode {
    match action {
        KeysAction::Create { name } => match create_key(store, &name).await {
            Ok((secret, row)) => {
                eprintln!(
                    "created API key {:?} (id {}, prefix {}). This is the only time it is shown; store it now:",
                    row.name, row.id, row.prefix
                );
                println!("{secret}");
                ExitCode::SUCCESS
            }
            Err(CreateKeyError::NameTaken(n)) => {
                eprintln!("api: a key named {n:?} already exists; choose another --name");
                ExitCode::FAILURE
            }
            Err(CreateKeyError::Store(e)) => store_failed(&e),
        },
        KeysAction::List => match store.list_keys().await {
            Ok(keys) => {
                print!("{}", table(&keys));
                ExitCode::SUCCESS
            }
            Err(e) => store_failed(&e),
        },
        KeysAction::Revoke { name_or_id } => match store.revoke_key(&name_or_id).await {
            Ok(Some(k)) => {
                println!(
                    "revoked API key {:?} (id {}, prefix {}); every replica refuses it within seconds",
                    k.name, k.id, k.prefix
                );
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("api: no API key named or numbered {name_or_id:?} (see `api keys list`)");
                ExitCode::FAILURE
            }
            Err(e) => store_failed(&e),
        },
    }
}

fn store_failed(e: &StoreError) -> ExitCode {
    eprintln!("api: {e}");
    ExitCode::FAILURE
}

/// The `api keys list` table (never the keys: names and prefixes).
pub fn table(keys: &[ApiKey]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "NAME".to_owned(),
        "PREFIX".to_owned(),
        "CREATED".to_owned(),
        "LAST USED".to_owned(),
        "REVOKED".to_owned(),
    ]];
    for k in keys {
        rows.push([
            k.id.to_string(),
            k.name.clone(),
            k.prefix.clone(),
            when(Some(k.created_at)),
            when(k.last_used_at),
            when(k.revoked_at),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if keys.is_empty() {
        out.push_str("(no keys yet: api keys create --name NAME)\n");
    }
    out
}

fn when(ms: Option<i64>) -> String {
    match ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms)),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_key_name("ci-1.prod_x").is_ok());
        for bad in ["", "has space", "ü", &"x".repeat(65)] {
            assert!(check_key_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_shows_no_secret() {
        let k = ApiKey {
            id: 1,
            name: "ci".into(),
            prefix: "hg_1234abcd".into(),
            created_at: 0,
            last_used_at: None,
            revoked_at: Some(1000),
        };
        let t = table(&[k]);
        assert!(t.starts_with("ID  NAME  PREFIX"), "{t}");
        assert!(
            t.contains("hg_1234abcd") && t.contains("Thu, 01 Jan 1970"),
            "{t}"
        );
    }
}
