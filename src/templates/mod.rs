//! Localized templates: `--templates-dir`, one directory per template id
//! and one file per locale and part:
//!
//! ```text
//! templates/order_shipped/pt-BR.sms
//! templates/order_shipped/en.push.title
//! templates/order_shipped/en.push.body
//! ```
//!
//! Files are MiniJinja (Jinja2 syntax: `{{ name }}`, `{% if %}`), filled
//! from the request's `template_vars`, with nothing escaped: SMS is plain
//! text, and push text is JSON-encoded when the FCM request is built. Each
//! file is parsed once, when the set is loaded; a set that does not load
//! names its file and is never used. A request's locale falls back one
//! subtag at a time, then to the default locale: `pt-BR` → `pt` → `en`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

use crate::model::{Channel, InvalidReason, Request};

/// A template's file, by what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Part {
    Sms,
    PushTitle,
    PushBody,
}

impl Part {
    const ALL: [Part; 3] = [Part::Sms, Part::PushTitle, Part::PushBody];

    fn suffix(self) -> &'static str {
        match self {
            Part::Sms => "sms",
            Part::PushTitle => "push.title",
            Part::PushBody => "push.body",
        }
    }
}

/// Why a template set did not load: the file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub reason: String,
}

/// A loaded set: every file parsed.
pub(crate) struct Templates {
    env: Environment<'static>,
    /// `(template id, lowercased locale, part)` of every file.
    files: HashSet<(String, String, Part)>,
    /// `(template id, lowercased locale)` → the locale as its files spell it.
    spelled: HashMap<(String, String), String>,
    default_locale: String,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").field("files", &self.files.len()).field("default_locale", &self.default_locale).finish()
    }
}

/// What a template made for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub title: Option<String>,
    pub body: String,
    /// The locale whose files were used, as the files spell it.
    pub locale: String,
}

/// What one render may spend, in MiniJinja's instructions: a template
/// that loops without end cannot hold up its partition. The largest real
/// message takes a few hundred.
const FUEL: u64 = 20_000;

/// The most a render may write: far over what any channel takes, so the
/// limits of the channel say why, and a runaway render stops here.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Renders slower than this are logged, naming the template: an operator's
/// template runs in the consume loop, and fuel counts instructions, not
/// what each one costs.
const SLOW_RENDER: std::time::Duration = std::time::Duration::from_millis(50);

/// The largest template file: FCM takes 4 KB, Twilio 1,600 characters.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// BCP 47 allows longer tags in principle; none in use is over 35.
const MAX_LOCALE_LEN: usize = 35;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A typo in a variable's name is an error, not an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env
}

/// Whether `tag` looks like a BCP 47 tag (`en`, `pt-BR`, `zh-Hant-TW`;
/// `_` is taken for `-`): alphanumeric subtags of 1 to 8, the first
/// alphabetic, 35 characters at most.
pub(crate) fn is_locale(tag: &str) -> bool {
    tag.len() <= MAX_LOCALE_LEN
        && tag.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && tag.split(['-', '_']).all(|s| (1..=8).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl Templates {
    /// Reads and parses every file under `dir`.
    pub(crate) fn load(dir: &Path, default_locale: &str) -> Result<Templates, LoadError> {
        let error = |path: &Path, reason: String| LoadError { path: path.to_owned(), reason };
        // Files may be symlinks (a Kubernetes ConfigMap's are), but only to
        // regular files inside the directory: not a FIFO that never ends,
        // not /dev/zero, not /proc/self/environ.
        let root = dir.canonicalize().map_err(|e| error(dir, format!("cannot be read: {e}")))?;
        let mut templates = Templates { env: environment(), files: HashSet::new(), spelled: HashMap::new(), default_locale: default_locale.to_owned() };
        for id_dir in sorted_entries(dir).map_err(|e| error(dir, e))? {
            let Some(id) = visible_name(&id_dir) else { continue };
            if !id_dir.is_dir() {
                return Err(error(&id_dir, "not a directory: each template is a directory of files named <locale>.<part>".into()));
            }
            if !id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
                return Err(error(&id_dir, "a template id is letters, digits, '_', '-' and '.'".into()));
            }
            for file in sorted_entries(&id_dir).map_err(|e| error(&id_dir, e))? {
                let Some(name) = visible_name(&file) else { continue };
                let (locale, part) = parse_file_name(&name).map_err(|reason| error(&file, reason))?;
                let source = read_template(&root, &file).map_err(|reason| error(&file, reason))?;
                let key = format!("{id}/{}.{}", locale.to_ascii_lowercase(), part.suffix());
                if templates.files.contains(&(id.clone(), locale.to_ascii_lowercase(), part)) {
                    return Err(error(&file, format!("another file is also {key}, in another case")));
                }
                templates.env.add_template_owned(key, source).map_err(|e| error(&file, describe(&e)))?;
                templates.files.insert((id.clone(), locale.to_ascii_lowercase(), part));
                templates.spelled.insert((id.clone(), locale.to_ascii_lowercase()), locale);
            }
        }
        Ok(templates)
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// The text of `request`, from its `template_id`, in the first locale
    /// of its fallback chain that has the channel's file.
    pub(crate) fn render(&self, template_id: &str, request: &Request) -> Result<Rendered, InvalidReason> {
        let parts: &[Part] = match request.channel {
            Channel::Sms => &[Part::Sms],
            Channel::Push => &[Part::PushTitle, Part::PushBody],
        };
        let wanted = request.prefs.locale.as_deref().unwrap_or(&self.default_locale);
        if !is_locale(wanted) {
            return Err(InvalidReason::InvalidLocale(wanted.to_owned()));
        }
        let has = |locale: &str, part: Part| self.files.contains(&(template_id.to_owned(), locale.to_owned(), part));
        let locale = fallbacks(wanted, &self.default_locale)
            .into_iter()
            .find(|l| parts.iter().any(|p| has(l, *p)))
            .ok_or_else(|| InvalidReason::TemplateMissing { template_id: template_id.to_owned(), locale: wanted.to_owned() })?;
        let fill = |part: Part| -> Result<Option<String>, InvalidReason> {
            if !has(&locale, part) {
                return Ok(None);
            }
            let name = format!("{template_id}/{locale}.{}", part.suffix());
            let template = self.env.get_template(&name).expect("every file listed is in the environment");
            let vars = &request.content.template_vars;
            let started = std::time::Instant::now();
            let mut out = Capped(Vec::new());
            let rendered = template.render_captured_to(vars, &mut out).map(drop);
            if started.elapsed() > SLOW_RENDER {
                tracing::warn!(message = "A template took long to render; it runs in the consume loop.", template = name, took_ms = started.elapsed().as_millis() as u64);
            }
            match rendered {
                Ok(_) => Ok(Some(String::from_utf8(out.0).expect("MiniJinja writes UTF-8"))),
                Err(e) if e.kind() == ErrorKind::UndefinedError => {
                    // Dotted too: `user.name` where `user` is text.
                    let mut missing: Vec<String> = template.undeclared_variables(true).into_iter().filter(|v| !vars.contains_key(v)).collect();
                    missing.sort();
                    Err(InvalidReason::TemplateVariableMissing { template_id: template_id.to_owned(), variables: missing.join(", ") })
                }
                // The kind and the line only: MiniJinja's own detail can quote
                // a value (`unable to calculate 834291 % 0`).
                Err(e) => Err(InvalidReason::Template(match e.line() {
                    Some(line) => format!("{name}: {} (line {line})", e.kind()),
                    None => format!("{name}: {}", e.kind()),
                })),
            }
        };
        let (title, body) = match request.channel {
            Channel::Sms => (None, fill(Part::Sms)?.unwrap_or_default()),
            Channel::Push => (fill(Part::PushTitle)?, fill(Part::PushBody)?.unwrap_or_default()),
        };
        // As its files spell it: `pt-BR`, not `pt-br`.
        let locale = self.spelled.get(&(template_id.to_owned(), locale.clone())).cloned().unwrap_or(locale);
        Ok(Rendered { title, body, locale })
    }
}

/// A template file's text: a regular file inside `root` (after symlinks),
/// of at most [`MAX_FILE_BYTES`], in UTF-8.
fn read_template(root: &Path, file: &Path) -> Result<String, String> {
    use std::io::Read;
    let real = file.canonicalize().map_err(|e| format!("cannot be read: {e}"))?;
    if !real.starts_with(root) {
        return Err(format!("leads to {}, outside the templates directory", real.display()));
    }
    if !std::fs::metadata(&real).map_err(|e| format!("cannot be read: {e}"))?.is_file() {
        return Err("is not a regular file".into());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&real).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)).map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("is over {MAX_FILE_BYTES} bytes, the most a template file may be"));
    }
    String::from_utf8(bytes).map_err(|e| format!("is not UTF-8 text: {e}"))
}

/// Where a render writes, refusing to grow past [`MAX_OUTPUT_BYTES`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT_BYTES {
            return Err(std::io::Error::other(format!("the text grew past {MAX_OUTPUT_BYTES} bytes")));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `pt-BR` → `pt-br`, `pt`, then the default and its own parents; each
/// once, lowercased.
pub(crate) fn fallbacks(locale: &str, default: &str) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for tag in [locale, default] {
        let tag = tag.replace('_', "-").to_ascii_lowercase();
        let mut cut = tag.as_str();
        loop {
            if !cut.is_empty() && !chain.iter().any(|c| c == cut) {
                chain.push(cut.to_owned());
            }
            match cut.rfind('-') {
                Some(at) => cut = &cut[..at],
                None => break,
            }
        }
    }
    chain
}

/// `pt-BR.push.title` → (`pt-BR`, push title).
fn parse_file_name(name: &str) -> Result<(String, Part), String> {
    let (locale, suffix) = name.split_once('.').ok_or_else(|| expected(name))?;
    let part = Part::ALL.into_iter().find(|p| p.suffix() == suffix).ok_or_else(|| expected(name))?;
    if !is_locale(locale) {
        return Err(format!("{locale:?} is not a BCP 47 locale such as en or pt-BR"));
    }
    Ok((locale.replace('_', "-"), part))
}

fn expected(name: &str) -> String {
    format!("{name:?} is not named <locale>.sms, <locale>.push.title or <locale>.push.body")
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot be read: {e}"))?;
    let mut paths = entries.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>().map_err(|e| format!("cannot be read: {e}"))?;
    paths.sort();
    Ok(paths)
}

/// The entry's name, unless it is hidden (an editor's swap file, `.git`,
/// a ConfigMap's `..data`) or an editor's backup (`en.sms~`).
fn visible_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    (!name.starts_with('.') && !name.ends_with('~')).then_some(name)
}

/// MiniJinja's error with its line, without the source it quotes (which
/// `Display` in alternate form adds).
fn describe(error: &minijinja::Error) -> String {
    match error.line() {
        Some(line) => format!("{} (line {line})", error.detail().unwrap_or(&error.kind().to_string())),
        None => error.to_string(),
    }
}

/// The set in use, swapped whole on reload: a request is rendered by the
/// old set or the new one, never a mix.
#[derive(Debug, Clone)]
pub(crate) struct TemplateSet {
    dir: PathBuf,
    current: Arc<RwLock<Arc<Templates>>>,
}

impl TemplateSet {
    pub(crate) fn load(dir: &Path, default_locale: &str) -> Result<TemplateSet, LoadError> {
        let templates = Templates::load(dir, default_locale)?;
        Ok(TemplateSet { dir: dir.to_owned(), current: Arc::new(RwLock::new(Arc::new(templates))) })
    }

    pub(crate) fn current(&self) -> Arc<Templates> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the directory again. A set that does not load is refused and
    /// the one in use stays.
    pub(crate) fn reload(&self) -> Result<usize, LoadError> {
        let default_locale = self.current().default_locale.clone();
        let templates = Templates::load(&self.dir, &default_locale)?;
        let files = templates.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(templates);
        Ok(files)
    }

    /// Reloads on every SIGHUP, until dropped.
    pub(crate) async fn reload_on_hangup(self) {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!(message = "Cannot listen for SIGHUP; templates load only at startup.");
            return;
        };
        while hangups.recv().await.is_some() {
            match self.reload() {
                Ok(files) => tracing::info!(message = "Templates reloaded.", dir = %self.dir.display(), files),
                Err(error) => tracing::error!(message = "Templates not reloaded; the set loaded before stays in use.", %error),
            }
        }
    }
}

/// The `{name}` syntax of `--sms-template`, as MiniJinja: `{name}` becomes
/// `{{ name }}`, `\{` and `\}` are braces. Parsed once, at startup.
pub(crate) struct BraceTemplate {
    env: Environment<'static>,
}

const BRACE_TEMPLATE: &str = "sms-template";

impl BraceTemplate {
    pub(crate) fn parse(template: &str) -> Result<BraceTemplate, String> {
        let mut jinja = String::with_capacity(template.len() * 2);
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some('{' | '}')) => {
                    let brace = chars.next().expect("peeked");
                    jinja.push_str(if brace == '{' { "{{ \"{\" }}" } else { "}" });
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("{{{name} is unclosed (write \\{{ for a brace)")),
                        }
                    }
                    let name = name.trim();
                    let is_path = !name.is_empty()
                        && name.split('.').all(|p| p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    if !is_path {
                        return Err(format!("{{{name}}} is not a variable name (or a brace is unclosed; write \\{{ for a brace)"));
                    }
                    jinja.push_str("{{ ");
                    jinja.push_str(name);
                    jinja.push_str(" }}");
                }
                c => jinja.push(c),
            }
        }
        let mut env = environment();
        env.set_keep_trailing_newline(true);
        env.add_template_owned(BRACE_TEMPLATE, jinja).map_err(|e| describe(&e))?;
        Ok(BraceTemplate { env })
    }

    /// Fills the template from `vars`, and `{message}` from `message`.
    pub(crate) fn render(&self, vars: &std::collections::HashMap<String, String>, message: &str) -> Result<String, InvalidReason> {
        let mut context: BTreeMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        context.insert("message", message);
        let template = self.env.get_template(BRACE_TEMPLATE).expect("added at parse");
        template.render(&context).map_err(|e| {
            // Its errors name variables, never values.
            let missing = template.undeclared_variables(false).into_iter().filter(|v| !context.contains_key(v.as_str())).collect::<Vec<_>>();
            match missing.is_empty() {
                false => InvalidReason::Template(format!("missing variable {}", missing.join(", "))),
                true => InvalidReason::Template(describe(&e)),
            }
        })
    }
}

impl fmt::Debug for BraceTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BraceTemplate")
    }
}

/// The flags of localized templates.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Templates")]
pub struct TemplateArgs {
    /// Directory of localized templates: TEMPLATE_ID/LOCALE.sms, .push.title and .push.body. Loaded at startup, and again on SIGHUP.
    #[arg(long, env = "HERALD_TEMPLATES_DIR")]
    pub(crate) templates_dir: Option<std::path::PathBuf>,

    /// The locale a template falls back to when neither the request's locale nor its parents have a file.
    #[arg(long, env = "HERALD_DEFAULT_LOCALE", default_value = "en")]
    pub(crate) default_locale: String,
}

impl TemplateArgs {
    /// The directory, when templates are on, and the default locale.
    pub(crate) fn settings(&self) -> Result<Option<(std::path::PathBuf, String)>, crate::flags::ConfigError> {
        if !is_locale(&self.default_locale) {
            return Err(crate::flags::ConfigError::DefaultLocale(self.default_locale.clone()));
        }
        Ok(self.templates_dir.clone().map(|dir| (dir, self.default_locale.clone())))
    }
}

#[cfg(test)]
mod tests;
