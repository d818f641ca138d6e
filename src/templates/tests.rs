use super::*;
use crate::model::{Content, Prefs};

/// A directory of its own under the system's temporary one.
fn dir(files: &[(&str, &str)]) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("herald-templates-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn request(channel: Channel, locale: Option<&str>, vars: &[(&str, &str)]) -> Request {
    Request {
        event_id: "e".into(),
        user_id: "u".into(),
        channel,
        recipient: "+14155550100".into(),
        content: Content {
            template_id: Some("order_shipped".into()),
            template_vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Content::default()
        },
        scheduled_at: None,
        created_at: chrono::Utc::now(),
        prefs: Prefs { locale: locale.map(str::to_owned), ..Prefs::default() },
    }
}

fn shipped() -> PathBuf {
    dir(&[
        ("order_shipped/pt-BR.sms", "Olá {{ name }}, seu pedido {{ order }} foi enviado.\n"),
        ("order_shipped/pt.sms", "Olá {{ name }}, a sua encomenda {{ order }} foi enviada."),
        ("order_shipped/en.sms", "Hi {{ name }}, order {{ order }} has shipped."),
        ("order_shipped/pt.push.title", "Encomenda enviada"),
        ("order_shipped/pt.push.body", "{{ name }}: {{ order }} <a> & \"b\""),
        ("order_shipped/en.push.body", "{{ name }}: {{ order }} shipped"),
        ("order_shipped/.en.sms.swp", "{{ not parsed"),
    ])
}

#[test]
fn locales_fall_back_a_subtag_at_a_time_then_to_the_default() {
    assert_eq!(fallbacks("pt-BR", "en"), ["pt-br", "pt", "en"]);
    assert_eq!(fallbacks("zh_Hant_TW", "en-US"), ["zh-hant-tw", "zh-hant", "zh", "en-us", "en"]);
    assert_eq!(fallbacks("en", "en"), ["en"]);
    let t = Templates::load(&shipped(), "en").unwrap();
    let vars = [("name", "Ana"), ("order", "#42")];
    let sms = |locale| t.render("order_shipped", &request(Channel::Sms, locale, &vars)).unwrap();
    assert_eq!(sms(Some("pt-BR")), Rendered { title: None, body: "Olá Ana, seu pedido #42 foi enviado.".into(), locale: "pt-BR".into() });
    assert_eq!(sms(Some("PT-br")).locale, "pt-BR", "matched in any case, reported as the files spell it");
    assert_eq!(sms(Some("pt-PT")).locale, "pt");
    assert_eq!(sms(Some("de-DE")).body, "Hi Ana, order #42 has shipped.");
    assert_eq!(sms(Some("de-DE")).locale, "en");
    assert_eq!(sms(None).locale, "en", "no locale: the default");
    // Push: pt has both parts; nothing is escaped.
    let push = t.render("order_shipped", &request(Channel::Push, Some("pt-BR"), &vars)).unwrap();
    assert_eq!(push, Rendered { title: Some("Encomenda enviada".into()), body: "Ana: #42 <a> & \"b\"".into(), locale: "pt".into() });
    let push = t.render("order_shipped", &request(Channel::Push, Some("fr"), &vars)).unwrap();
    assert_eq!((push.title, push.locale.as_str()), (None, "en"));
}

#[test]
fn the_templates_shipped_in_the_repository_load_and_render() {
    let t = Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), "en").unwrap();
    let vars = [("name", "Ana"), ("order", "#1042"), ("url", "https://example.com/t/1042")];
    let sms = t.render("order_shipped", &request(Channel::Sms, Some("pt-BR"), &vars)).unwrap();
    assert_eq!(sms.body, "Olá Ana, seu pedido #1042 foi enviado. Acompanhe: https://example.com/t/1042");
    // An optional variable: `is defined` is allowed however strict the rest is.
    let push = t.render("order_shipped", &request(Channel::Push, Some("pt-PT"), &vars)).unwrap();
    assert_eq!((push.title.as_deref(), push.body.as_str(), push.locale.as_str()), (Some("Encomenda #1042 enviada"), "Ana, já está a caminho.", "pt"));
    let with_eta = request(Channel::Push, Some("en-GB"), &[("name", "Ana"), ("order", "#1042"), ("eta", "tomorrow")]);
    assert_eq!(t.render("order_shipped", &with_eta).unwrap().body, "Ana, it is on its way. It should arrive tomorrow.");
}

#[test]
fn a_missing_template_and_a_missing_variable_have_their_own_codes() {
    let t = Templates::load(&shipped(), "en").unwrap();
    let mut unknown = request(Channel::Sms, Some("pt-BR"), &[("name", "Ana"), ("order", "1")]);
    unknown.content.template_id = Some("password_reset".into());
    let missing = t.render("password_reset", &unknown).unwrap_err();
    assert_eq!(missing, InvalidReason::TemplateMissing { template_id: "password_reset".into(), locale: "pt-BR".into() });
    assert_eq!(missing.code().as_str(), "template-missing");
    // No file in the chain: the default locale has no SMS file either.
    let no_sms = Templates::load(&dir(&[("order_shipped/pt.push.body", "x")]), "en").unwrap();
    assert!(matches!(no_sms.render("order_shipped", &request(Channel::Sms, Some("pt"), &[])), Err(InvalidReason::TemplateMissing { .. })));
    let lacking = t.render("order_shipped", &request(Channel::Sms, Some("en"), &[("name", "Ana")])).unwrap_err();
    assert_eq!(lacking, InvalidReason::TemplateVariableMissing { template_id: "order_shipped".into(), variables: "order".into() });
    assert_eq!(lacking.code().as_str(), "template-variable-missing");
    assert!(!lacking.to_string().contains("Ana"), "names variables, never values: {lacking}");
}

#[test]
fn what_a_producer_or_a_template_may_cost_is_bounded() {
    let root = dir(&[("order_shipped/en.sms", "Hi {{ name }}"), ("endless/en.sms", "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}")]);
    let t = Templates::load(&root, "en").unwrap();
    // A locale of a megabyte is no locale, and its message stays short.
    let huge = "a-".repeat(500_000);
    let refused = t.render("order_shipped", &request(Channel::Sms, Some(&huge), &[("name", "Ana")])).unwrap_err();
    assert!(matches!(refused, InvalidReason::InvalidLocale(_)), "{refused:?}");
    assert_eq!(refused.code().as_str(), "invalid-locale");
    assert!(refused.to_string().len() < 200, "clipped: {} bytes", refused.to_string().len());
    for bad in ["", "e n", "-en", "1en", "en--us", "toolongsubtag", &"en-".repeat(20)] {
        assert!(!is_locale(bad), "{bad:?}");
    }
    for good in ["en", "pt-BR", "pt_br", "zh-Hant-TW", "es-419"] {
        assert!(is_locale(good), "{good:?}");
    }
    // A template that would loop for ever runs out of fuel instead.
    let started = std::time::Instant::now();
    let endless = t.render("endless", &request(Channel::Sms, None, &[])).unwrap_err();
    assert!(matches!(endless, InvalidReason::Template(ref e) if e.contains("fuel")), "{endless:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    // A producer's template id of a megabyte is not repeated whole.
    let missing = t.render(&"x".repeat(1_000_000), &request(Channel::Sms, None, &[])).unwrap_err();
    assert!(missing.to_string().len() < 300, "{} bytes", missing.to_string().len());
    // Nor is a file larger than any message could be loaded.
    let big = dir(&[("big/en.sms", &"x".repeat(64 * 1024 + 1))]);
    assert!(Templates::load(&big, "en").unwrap_err().to_string().contains("over 65536 bytes"));
}

#[test]
fn only_regular_files_inside_the_directory_are_read() {
    use std::os::unix::fs::symlink;
    let root = dir(&[("ok/en.sms", "fine"), ("ok/en.sms~", "{{ an editor's backup, skipped")]);
    // A ConfigMap's layout: the file is a symlink into a hidden directory beside it.
    std::fs::create_dir_all(root.join("..data/cm")).unwrap();
    std::fs::write(root.join("..data/cm/en.sms"), "from a ConfigMap").unwrap();
    symlink(root.join("..data/cm"), root.join("cm")).unwrap();
    let t = Templates::load(&root, "en").unwrap();
    assert_eq!(t.render("cm", &request(Channel::Sms, None, &[])).unwrap().body, "from a ConfigMap");
    assert_eq!(t.len(), 2);
    for (name, target, why) in [("zero", "/dev/zero", "outside"), ("env", "/proc/self/environ", "outside")] {
        let bad = dir(&[("ok/en.sms", "fine")]);
        symlink(target, bad.join("ok/pt.sms")).unwrap();
        let error = Templates::load(&bad, "en").unwrap_err().to_string();
        assert!(error.contains("ok/pt.sms") && error.contains(why), "{name}: {error}");
    }
    let fifo = dir(&[("ok/en.sms", "fine")]);
    let made = std::process::Command::new("mkfifo").arg(fifo.join("ok/pt.sms")).status().unwrap();
    assert!(made.success());
    let started = std::time::Instant::now();
    let error = Templates::load(&fifo, "en").unwrap_err().to_string();
    assert!(error.contains("ok/pt.sms") && error.contains("not a regular file"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn render_errors_name_no_value_and_missing_attributes_are_named() {
    let root = dir(&[
        ("otp/en.sms", "Your code {{ code }}{% if (code|int) % 0 %}{% endif %}"),
        ("attr/en.sms", "Hi {{ user.name }}"),
        ("huge/en.sms", "{% for i in range(1000) %}{{ name }}{% endfor %}"),
    ]);
    let t = Templates::load(&root, "en").unwrap();
    let error = t.render("otp", &request(Channel::Sms, None, &[("code", "834291")])).unwrap_err();
    assert!(matches!(error, InvalidReason::Template(_)) && !error.to_string().contains("834291"), "{error}");
    let error = t.render("attr", &request(Channel::Sms, None, &[("user", "bob")])).unwrap_err();
    assert_eq!(error, InvalidReason::TemplateVariableMissing { template_id: "attr".into(), variables: "user.name".into() });
    // A render that would write megabytes stops at the cap.
    let error = t.render("huge", &request(Channel::Sms, None, &[("name", &"x".repeat(10_000))])).unwrap_err();
    assert!(matches!(error, InvalidReason::Template(ref e) if e.contains("huge/en.sms")), "{error:?}");
}

#[test]
fn a_file_that_does_not_load_is_named() {
    type Files<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Files, &str, &str); 5] = [
        (&[("order_shipped/en.sms", "Hi {{ name ")], "order_shipped/en.sms", "line 1"),
        (&[("order_shipped/en.email", "x")], "order_shipped/en.email", "<locale>.sms"),
        (&[("order_shipped/e n.sms", "x")], "order_shipped/e n.sms", "BCP 47"),
        (&[("loose.sms", "x")], "loose.sms", "not a directory"),
        (&[("order_shipped/en.sms", "x"), ("order_shipped/EN.sms", "y")], "order_shipped/", "another file"),
    ];
    for (files, path, why) in cases {
        let root = dir(files);
        let error = Templates::load(&root, "en").unwrap_err().to_string();
        assert!(error.contains(path) && error.contains(why), "{files:?}: {error}");
        assert!(error.contains(&root.display().to_string()), "the whole path: {error}");
    }
    let error = Templates::load(Path::new("/nonexistent/herald-templates"), "en").unwrap_err().to_string();
    assert!(error.contains("/nonexistent/herald-templates") && error.contains("cannot be read"), "{error}");
}

#[test]
fn a_reload_swaps_the_whole_set_and_a_bad_one_leaves_the_old() {
    let root = dir(&[("order_shipped/en.sms", "v1 {{ order }}")]);
    let set = TemplateSet::load(&root, "en").unwrap();
    let body = |set: &TemplateSet| set.current().render("order_shipped", &request(Channel::Sms, None, &[("order", "1")])).map(|r| r.body);
    assert_eq!(body(&set), Ok("v1 1".into()));
    std::fs::write(root.join("order_shipped/en.sms"), "v2 {{ order }}").unwrap();
    assert_eq!(set.reload().unwrap(), 1);
    assert_eq!(body(&set), Ok("v2 1".into()));
    std::fs::write(root.join("order_shipped/pt.sms"), "{% if %}").unwrap();
    std::fs::write(root.join("order_shipped/en.sms"), "v3 {{ order }}").unwrap();
    let refused = set.reload().unwrap_err();
    assert!(refused.to_string().contains("order_shipped/pt.sms"), "{refused}");
    assert_eq!(body(&set), Ok("v2 1".into()), "the old set, whole: not v3");
}

#[test]
fn the_brace_syntax_is_parsed_once_and_means_what_it_did() {
    // Jinja's own markers are text here, in the template and in values.
    let t = BraceTemplate::parse("{user_name}: {message} \\{literal\\} %} #} }}").unwrap_or_else(|e| panic!("{e}"));
    let vars = [("user_name".to_owned(), "Ada {{ x }}".to_owned())].into();
    assert_eq!(t.render(&vars, "hi {% raw %}").unwrap(), "Ada {{ x }}: hi {% raw %} {literal} %} #} }}");
    match t.render(&Default::default(), "hi") {
        Err(InvalidReason::Template(e)) => assert_eq!(e, "missing variable user_name"),
        other => panic!("{other:?}"),
    }
    for bad in ["{unclosed", "x {abc", "{}", "{a b}", "{1x}", "x {", "{{ jinja }}", "{# comment #}", "{% if x %}"] {
        assert!(BraceTemplate::parse(bad).is_err(), "{bad:?} parsed");
    }
    assert_eq!(BraceTemplate::parse("line\n").unwrap().render(&Default::default(), "").unwrap(), "line\n");
    assert_eq!(BraceTemplate::parse("\\{ alone").unwrap().render(&Default::default(), "").unwrap(), "{ alone");
}
