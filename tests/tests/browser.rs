//! The example pages in a real browser: Debian's chromium, headless, through
//! chromedriver, against a real host process (`serve --http`). Two pages chat; two
//! tabs of one document edit at once and end with the same text as the object; a
//! room evicted while its pages' sockets stay open still delivers the next message.
//! Needs `chromium` and `chromium-driver` (see the README): fails, never skips,
//! without them.

mod common;

use common::browser::{eval, texts, wait_for, Browser};
use common::{token, HostProcess};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

fn start(dir: &std::path::Path, extra: &[&str]) -> HostProcess {
    let mut flags = vec!["--http", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    HostProcess::start(dir, &flags)
}

/// Type `text` into the chat page's box and send it.
async fn say(page: &Client, text: &str) {
    let input = page.find(Locator::Id("text")).await.unwrap();
    input.send_keys(text).await.unwrap();
    page.find(Locator::Id("send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Wait until the page's message list ends with `line`.
async fn wait_line(page: &Client, line: &str) {
    let expr = format!(
        "(() => {{ const li = document.querySelector('#messages li:last-child'); return li && li.textContent === {}; }})()",
        json!(line)
    );
    wait_for(page, &format!("the line {line:?}"), &expr).await;
}

/// Wait until the page shows exactly `users` as present.
async fn wait_presence(page: &Client, users: &[&str]) {
    let expr = format!(
        "JSON.stringify(Array.from(document.querySelectorAll('#presence li')).map((e) => e.textContent)) === {}",
        json!(json!(users).to_string())
    );
    wait_for(page, &format!("presence {users:?}"), &expr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let mut browser = Browser::start();
    let alice = browser
        .page(&host.http_url("/chat/?room=web&user=alice"))
        .await;
    wait_presence(&alice, &["alice"]).await;
    let bob = browser
        .page(&host.http_url("/chat/?room=web&user=bob"))
        .await;
    wait_presence(&bob, &["alice", "bob"]).await;
    wait_presence(&alice, &["alice", "bob"]).await;

    say(&alice, "hello bob").await;
    wait_line(&alice, "alice: hello bob").await;
    wait_line(&bob, "alice: hello bob").await;
    say(&bob, "hi alice").await;
    wait_line(&bob, "bob: hi alice").await;
    wait_line(&alice, "bob: hi alice").await;
    for page in [&alice, &bob] {
        assert_eq!(
            texts(page, "#messages li").await,
            ["alice: hello bob", "bob: hi alice"]
        );
    }

    // The history is in the room's database: a third page gets it on joining.
    let carol = browser
        .page(&host.http_url("/chat/?room=web&user=carol"))
        .await;
    wait_presence(&alice, &["alice", "bob", "carol"]).await;
    wait_line(&carol, "bob: hi alice").await;
    assert_eq!(
        texts(&carol, "#messages li").await,
        ["alice: hello bob", "bob: hi alice"]
    );
    // Bob leaves: the others see it.
    bob.close().await.unwrap();
    wait_presence(&alice, &["alice", "carol"]).await;
    wait_presence(&carol, &["alice", "carol"]).await;
    for page in [alice, carol] {
        page.close().await.unwrap();
    }
    host.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_room_still_delivers_to_open_pages() {
    let dir = tempfile::tempdir().unwrap();
    // One shard holding at most one active object: activating any other object
    // evicts the idle room, while the gateway keeps its sockets open.
    let host = start(dir.path(), &["--shards", "1", "--max-active", "1"]);
    let mut browser = Browser::start();
    let alice = browser
        .page(&host.http_url("/chat/?room=evict&user=alice"))
        .await;
    let bob = browser
        .page(&host.http_url("/chat/?room=evict&user=bob"))
        .await;
    wait_presence(&alice, &["alice", "bob"]).await;
    say(&alice, "before").await;
    wait_line(&bob, "alice: before").await;

    // Another object's call evicts the room (the only active slot is needed).
    let answer = reqwest::Client::new()
        .post(host.http_url("/v1/objects/Counter/elsewhere/increment"))
        .bearer_auth(token(&host))
        .json(&json!({"by": 1}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{answer:?}");

    // The pages never noticed: their sockets stayed open, and the next message wakes
    // the room with both sockets, their tags and who they are.
    assert_eq!(eval(&bob, "document.body.dataset.connected").await, "1");
    say(&bob, "after").await;
    wait_line(&alice, "bob: after").await;
    wait_line(&bob, "bob: after").await;
    assert_eq!(
        texts(&alice, "#messages li").await,
        ["alice: before", "bob: after"]
    );
    for page in [alice, bob] {
        page.close().await.unwrap();
    }
    host.kill9();
}

/// Make `n` random edits in the page's editor, a few milliseconds apart, as typing
/// would (each one an input event); resolves when they are made.
async fn scribble(page: &Client, n: u32, seed: u32) {
    let script = format!(
        r#"
        const done = arguments[arguments.length - 1];
        const editor = document.getElementById('editor');
        let seed = {seed}, left = {n};
        const rand = (k) => {{ seed = (seed * 1103515245 + 12345) % 2147483648; return seed % k; }};
        function step() {{
            if (left-- === 0) return done(true);
            const v = editor.value;
            if (v.length > 0 && rand(3) === 0) {{
                const at = rand(v.length);
                const len = 1 + rand(Math.min(4, v.length - at));
                editor.value = v.slice(0, at) + v.slice(at + len);
            }} else {{
                const at = rand(v.length + 1);
                editor.value = v.slice(0, at) + 'abcdefghij'[rand(10)] + String.fromCharCode(65 + rand(26)) + v.slice(at);
            }}
            editor.dispatchEvent(new Event('input'));
            setTimeout(step, rand(6));
        }}
        step();
        "#
    );
    page.execute_async(&script, Vec::new())
        .await
        .expect("the edits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_document_tabs_edit_at_once_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let mut browser = Browser::start();
    let one = browser
        .page(&host.http_url("/doc/?name=draft&user=ada"))
        .await;
    let two = browser
        .page(&host.http_url("/doc/?name=draft&user=grace"))
        .await;
    for page in [&one, &two] {
        wait_for(
            page,
            "the document's text",
            "document.body.dataset.version === '0'",
        )
        .await;
    }
    // Both type at the same time: their edits cross on the wire and the object
    // transforms the late ones.
    tokio::join!(scribble(&one, 60, 1), scribble(&two, 60, 2));
    let settled = "(() => { const s = window.docState(); return s.unsent === 0 ? s : null; })()";
    let (mut a, mut b): (Value, Value) = (Value::Null, Value::Null);
    // Each tab has all its edits acknowledged and the other's applied: 120 versions.
    for (page, state) in [(&one, &mut a), (&two, &mut b)] {
        wait_for(
            page,
            "all 120 edits",
            "document.body.dataset.version === '120'",
        )
        .await;
        *state = wait_for(page, "no unsent edits", settled).await;
    }
    assert_eq!(a["text"], b["text"], "the tabs converge");
    // And agree with the object's stored text.
    let (status, body) = {
        let r = reqwest::Client::new()
            .post(host.http_url("/v1/objects/Document/draft/text"))
            .bearer_auth(token(&host))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert!(status.is_success(), "{body}");
    assert_eq!(body, json!([120, a["text"]]));
    // A tab opened now starts from that text.
    let three = browser
        .page(&host.http_url("/doc/?name=draft&user=linus"))
        .await;
    wait_for(
        &three,
        "the document's text",
        "document.body.dataset.version === '120'",
    )
    .await;
    assert_eq!(eval(&three, "window.docState().text").await, a["text"]);
    for page in [one, two, three] {
        page.close().await.unwrap();
    }
    host.kill9();
}

/// The AI chat page (seed 000): a reply streams in; the page reloads mid-reply and
/// resumes after the last token it showed; it ends with the full text once, in
/// order, exactly the object's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_page_survives_a_reload_mid_reply() {
    use durable_examples::ai::{AiChat, REPLY_TOKENS};
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let mut browser = Browser::start();
    let page = browser.page(&host.http_url("/ai/#c=reload")).await;
    let prompt = page.find(Locator::Id("prompt")).await.unwrap();
    prompt
        .send_keys("tell me about durable objects")
        .await
        .unwrap();
    page.find(Locator::Id("send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Some tokens have arrived, the reply is not done: reload now.
    wait_for(
        &page,
        "the first tokens",
        "Number(document.getElementById('reply').dataset.seq) >= 10",
    )
    .await;
    let before = eval(&page, "document.getElementById('reply').textContent").await;
    let seen = eval(
        &page,
        "Number(document.getElementById('reply').dataset.seq)",
    )
    .await
    .as_u64()
    .unwrap();
    assert!(
        seen < REPLY_TOKENS as u64,
        "the reply ended before the reload ({seen} tokens): nothing to resume"
    );
    page.refresh().await.unwrap();
    // The reloaded page shows what it had at once, then resumes to the end.
    let done = wait_for(
        &page,
        "the reply to finish after the reload",
        "document.getElementById('reply').dataset.done === 'true' && document.getElementById('reply').textContent",
    )
    .await;
    let shown = done.as_str().unwrap().to_string();
    assert!(
        shown.starts_with(before.as_str().unwrap()),
        "the page lost what it showed before the reload"
    );
    let seq = eval(
        &page,
        "Number(document.getElementById('reply').dataset.seq)",
    )
    .await;
    assert_eq!(seq.as_u64(), Some(REPLY_TOKENS as u64));
    // Exactly the object's text: every token once, in order.
    let client = host.client().await;
    let replies = client.get::<AiChat>("reload").replies().await.unwrap();
    assert_eq!(replies.len(), 1);
    assert!(replies[0].done);
    assert_eq!(shown, replies[0].text);
}
