"""The feedback store and web app (`preftune annotate`): every endpoint, bad input, authorisation, escaping,
idempotent retries, undo, exports and agreement statistics, against the FastAPI app in process."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from fastapi.testclient import TestClient

from preftune.feedback.app import CSP, create_app
from preftune.feedback.store import FeedbackStore

XSS_PROMPT = '<script>alert("p")</script> {{7*7}} {% raw %}'
XSS_RESPONSE = '"><img src=x onerror=alert(1)>'
XSS_RULE = "<script>alert('rule')</script> {{ 7*7 }}"


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(tmp_path / "feedback.sqlite", overlap=2, seed=0)
    s.add_items("pairwise", [("What is 2 + 2?", ["4", "5"]), ("Name a colour.", ["red", "a colour"]),
                             ("Say hi.", ["hi", "hello there"])])
    return s


@pytest.fixture
def tokens(store):
    return {"ann": store.add_annotator("ann"), "bob": store.add_annotator("bob"), "admin": store.add_annotator("admin", admin=True)}


@pytest.fixture
def client(store):
    return TestClient(create_app(store, max_body_bytes=16384))


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def side_of(item, index):
    """The screen side showing the item's response ``index`` (the order is randomised per assignment)."""
    return "left" if item["responses"][0] == index else "right"


def next_item(client, token):
    r = client.get("/api/next", headers=auth(token))
    assert r.status_code == 200
    return r.json()["item"]


def submit(client, token, sid, assignment_id, answer, **extra):
    return client.post("/api/submit", headers=auth(token),
                       json={"submission_id": sid, "assignment_id": assignment_id, "answer": answer, **extra})


# -- the store ------------------------------------------------------------------------------------------------


def test_database_is_wal_and_tokens_are_stored_as_digests(store, tokens):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    stored = [r[0] for r in conn.execute("SELECT token_sha256 FROM annotators")]
    assert len(stored) == 3 and all(len(d) == 64 for d in stored)
    assert not any(t in d for t in tokens.values() for d in stored)
    assert all(len(t) == 32 for t in tokens.values())  # 24 random bytes, URL-safe base64


def test_overlap_k_assigns_each_item_to_k_annotators_never_twice_to_one(tmp_path):
    s = FeedbackStore(tmp_path / "f.sqlite", overlap=2, seed=1)
    s.add_items("rating", [(f"p{i}", [f"r{i}"]) for i in range(3)])
    people = {n: s.authenticate(s.add_annotator(n)) for n in ("a", "b", "c")}
    seen = {n: [] for n in people}
    for name in ("a", "b", "c"):
        while (item := s.next_assignment(people[name])) is not None:
            seen[name].append(item.item_id)
            s.submit(people[name], f"sub-{name}-{item.id:04d}", item.id, {"rating": 4})
    # a and b take all three items (overlaps are completed first); c finds every item already with k = 2 annotators
    assert seen == {"a": [1, 2, 3], "b": [1, 2, 3], "c": []}
    assert s.progress(people["a"]).done == 3 and s.progress(people["c"]).total == 0
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):  # the schema itself refuses a second assignment
        s._conn().execute("INSERT INTO assignments (item_id, annotator_id, shown_order, created) VALUES (1, ?, '[0]', 0)",
                          (people["a"].id,))


def test_adding_the_same_items_again_adds_nothing(store):
    assert store.add_items("pairwise", [("What is 2 + 2?", ["4", "5"])]) == 0
    assert store.count_items() == {"pairwise": 3}


def test_store_refuses_bad_items_and_names(store):
    from preftune.errors import PreftuneError

    with pytest.raises(PreftuneError, match="a pairwise item needs 2 responses; item 0 has 3"):
        store.add_items("pairwise", [("p", ["a", "b", "c"])])
    with pytest.raises(PreftuneError, match="unknown feedback task 'vote'"):
        store.add_items("vote", [("p", ["a"])])
    with pytest.raises(PreftuneError, match="the rules task needs a list of rules"):
        store.add_items("rules", [("p", ["a"])])
    store.add_annotator("zoe")
    with pytest.raises(PreftuneError, match="there is already an annotator named 'zoe'"):
        store.add_annotator("zoe")


# -- pages ----------------------------------------------------------------------------------------------------


def test_every_response_has_the_security_headers(client, tokens):
    for r in (client.get("/"), client.get(f"/a/{tokens['ann']}"), client.get("/a/nope"), client.get("/api/next"),
              client.get("/static/annotate.js"), client.get("/nowhere"), client.post("/api/submit", content=b"x")):
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP


def test_pages_index_annotate_static_and_bad_links(client, tokens):
    assert "Open the private link" in client.get("/").text
    page = client.get(f"/a/{tokens['ann']}")
    assert page.status_code == 200 and "0 / 3 done" in page.text and 'src="/static/annotate.js"' in page.text
    assert "<script>" not in page.text.replace('<script src="/static/annotate.js" defer></script>', "")  # no inline script
    bad = client.get("/a/not-a-token")
    assert bad.status_code == 401 and "This link is not valid." in bad.text
    js = client.get("/static/annotate.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "/api/submit" in js.text
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


def test_stats_page_is_for_the_admin_only(client, tokens):
    assert client.get(f"/stats/{tokens['admin']}").status_code == 200
    r = client.get(f"/stats/{tokens['ann']}")
    assert r.status_code == 403 and "needs the admin link" in r.text
    assert client.get("/stats/xyz").status_code == 401


# -- the API ------------------------------------------------------------------------------------------------


def test_next_assignment_progress_submit_and_duplicate_retry(client, tokens, store):
    item = next_item(client, tokens["ann"])
    assert item["task"] == "pairwise" and item["prompt"] == "What is 2 + 2?" and sorted(item["responses"]) == ["4", "5"]
    assert client.get(f"/api/assignments/{item['assignment_id']}", headers=auth(tokens["ann"])).json() == item
    answer = {"choice": "left" if item["responses"][0] == "4" else "right", "strength": "much"}
    first = submit(client, tokens["ann"], "retry-0001", item["assignment_id"], answer)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    again = submit(client, tokens["ann"], "retry-0001", item["assignment_id"], answer)  # the client never saw the reply
    assert again.status_code == 200 and again.json() == {**first.json(), "duplicate": True}
    assert store.submission_ids() == ["retry-0001"]
    assert client.get("/api/progress", headers=auth(tokens["ann"])).json() == {"done": 1, "total": 3}
    row = sqlite3.connect(store.path).execute("SELECT answer FROM submissions").fetchone()
    assert json.loads(row[0])["winner"] == 0 and json.loads(row[0])["strength"] == "much"
    # the same id for another assignment is refused, not silently taken as a retry
    other = next_item(client, tokens["ann"])
    r = submit(client, tokens["ann"], "retry-0001", other["assignment_id"], {"choice": "tie"})
    assert r.status_code == 409 and r.json() == {"error": "this submission_id was already used for another submission"}


def test_left_right_order_is_recorded_and_position_bias_counts_left_wins(client, tokens, store):
    from preftune.feedback.stats import position_bias

    shown = []
    for n in range(3):
        item = next_item(client, tokens["ann"])
        shown.append(item["responses"])
        assert submit(client, tokens["ann"], f"left-{n:04d}", item["assignment_id"], {"choice": "left"}).status_code == 200
    rows = sqlite3.connect(store.path).execute("SELECT a.shown_order, s.answer FROM submissions s JOIN assignments a "
                                               "ON a.id = s.assignment_id ORDER BY s.id").fetchall()
    for (order, answer) in rows:
        assert json.loads(answer)["left"] == json.loads(order)[0] and json.loads(answer)["winner"] == json.loads(order)[0]
    # always "left": 3 of 3; Wilson 95% interval for 3/3: [n/(n+z^2), 1]
    z2 = 1.959963984540054 ** 2
    pb = position_bias(store.path)
    assert (pb["left_wins"], pb["decisive"], pb["rate"]) == (3, 3, 1.0)
    assert pb["ci_low"] == pytest.approx(3 / (3 + z2)) and pb["ci_high"] == pytest.approx(1.0)


def test_undo_reopens_the_last_item(client, tokens, store):
    item = next_item(client, tokens["ann"])
    submit(client, tokens["ann"], "undo-0001", item["assignment_id"], {"choice": "tie"})
    assert next_item(client, tokens["ann"])["assignment_id"] != item["assignment_id"]
    r = client.post("/api/undo", headers=auth(tokens["ann"]), json={})
    assert r.status_code == 200 and r.json() == {"ok": True, "assignment_id": item["assignment_id"]}
    assert next_item(client, tokens["ann"])["assignment_id"] == item["assignment_id"]
    assert client.get("/api/progress", headers=auth(tokens["ann"])).json()["done"] == 0
    assert submit(client, tokens["ann"], "undo-0002", item["assignment_id"], {"choice": "left"}).status_code == 200
    r = submit(client, tokens["ann"], "undo-0003", item["assignment_id"], {"choice": "right"})
    assert r.status_code == 409 and r.json()["error"] == (
        f"assignment {item['assignment_id']} is already answered (undo it first to change the answer)")
    assert client.post("/api/undo", headers=auth(tokens["bob"]), json={}).json() == {"error": "nothing to undo"}
    assert client.post("/api/undo", headers=auth(tokens["bob"])).json() == {"error": "nothing to undo"}  # no body at all


def test_an_annotator_cannot_read_or_write_another_annotators_items(client, tokens, store):
    mine = next_item(client, tokens["ann"])
    r = client.get(f"/api/assignments/{mine['assignment_id']}", headers=auth(tokens["bob"]))
    assert r.status_code == 404 and r.json() == {"error": f"no assignment {mine['assignment_id']} in your queue"}
    r = submit(client, tokens["bob"], "steal-0001", mine["assignment_id"], {"choice": "left"})
    assert r.status_code == 404 and store.submission_ids() == []
    # bob answers his own copy of the same item (overlap 2): a different assignment, and ann's stays open
    bobs = next_item(client, tokens["bob"])
    assert bobs["assignment_id"] != mine["assignment_id"] and bobs["prompt"] == mine["prompt"]
    submit(client, tokens["bob"], "bob-00001", bobs["assignment_id"], {"choice": "left"})
    assert client.post("/api/undo", headers=auth(tokens["ann"]), json={}).json() == {"error": "nothing to undo"}
    assert next_item(client, tokens["ann"])["assignment_id"] == mine["assignment_id"]
    # the admin reads anyone's assignment, but cannot answer it for them
    assert client.get(f"/api/assignments/{mine['assignment_id']}", headers=auth(tokens["admin"])).json() == mine
    r = submit(client, tokens["admin"], "admin-0001", mine["assignment_id"], {"choice": "left"})
    assert r.status_code == 404 and store.submission_ids() == ["bob-00001"]
    # annotators cannot see the statistics API
    assert client.get("/api/stats", headers=auth(tokens["ann"])).status_code == 401
    stats = client.get("/api/stats", headers=auth(tokens["admin"])).json()
    assert stats["counts"] == {"bob": {"pairwise": 1}}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": "Basic abc"}, {"Authorization": "Bearer " + "x" * 300}])
def test_every_api_call_needs_a_valid_token(client, headers):
    message = {"error": "a valid token is required (Authorization: Bearer TOKEN)"}
    for method, path in (("get", "/api/next"), ("get", "/api/progress"), ("get", "/api/assignments/1"),
                         ("post", "/api/submit"), ("post", "/api/undo"), ("get", "/api/stats")):
        r = getattr(client, method)(path, headers=headers, **({"json": {}} if method == "post" else {}))
        assert (r.status_code, r.json()) == (401, message), path


BAD_SUBMISSIONS = [
    (b"{not json", 422, "the request body must be JSON"),
    (b"[1, 2]", 422, "the request body must be a JSON object"),
    (b"", 422, "assignment_id must be a whole number"),
    (b"\xff\xfe", 422, "the request body must be JSON"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"choice": "left"}, "vote": 1}, 422, "unexpected field(s): vote"),
    ({"submission_id": "abcdefgh", "assignment_id": "1", "answer": {"choice": "left"}}, 422, "assignment_id must be a whole number"),
    ({"submission_id": "abcdefgh", "assignment_id": True, "answer": {"choice": "left"}}, 422, "assignment_id must be a whole number"),
    ({"submission_id": "abcdefgh", "assignment_id": 1}, 422, "answer is missing"),
    ({"submission_id": "short", "assignment_id": 1, "answer": {"choice": "left"}}, 422,
     "submission_id must be text of 8 to 100 characters, made by the client"),
    ({"submission_id": 12345678, "assignment_id": 1, "answer": {"choice": "left"}}, 422,
     "submission_id must be text of 8 to 100 characters, made by the client"),
    ({"submission_id": "abcdefgh", "assignment_id": 99, "answer": {"choice": "left"}}, 404, "no assignment 99 in your queue"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": "left"}, 422, "answer must be a JSON object"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"choice": "middle"}}, 422,
     "choice must be 'left', 'right' or 'tie', got 'middle'"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"choice": "left", "strength": "huge"}}, 422,
     "strength must be one of slightly, clearly, much (or absent), got 'huge'"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"choice": "tie", "strength": "much"}}, 422, "a tie has no strength"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"choice": "left", "rating": 3}}, 422,
     "unexpected answer field(s) for a pairwise item: rating"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"skip": True, "choice": "left"}}, 422,
     "a skip carries no other answer fields"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"choice": "left"}, "comment": "x" * 5001}, 422,
     "comment must be text of at most 5000 characters"),
    ({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"choice": "left"}, "comment": ["x"]}, 422,
     "comment must be text of at most 5000 characters"),
]


@pytest.mark.parametrize("body, status, message", BAD_SUBMISSIONS)
def test_bad_submissions_get_a_clear_4xx_json_error(client, tokens, store, body, status, message):
    next_item(client, tokens["ann"])  # assignment 1 exists and is ann's
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post("/api/submit", headers=auth(tokens["ann"]), **kwargs)
    assert (r.status_code, r.json()) == (status, {"error": message})
    assert store.submission_ids() == []


def test_request_bodies_over_the_limit_are_refused(client, tokens):
    big = json.dumps({"submission_id": "abcdefgh", "assignment_id": 1, "answer": {"choice": "left"}, "comment": "x" * 20000})
    r = client.post("/api/submit", headers=auth(tokens["ann"]), content=big)
    assert (r.status_code, r.json()) == (413, {"error": "request body over 16384 bytes"})

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(20):
            yield b"x" * 1000

    r = client.post("/api/submit", headers=auth(tokens["ann"]), content=chunks())
    assert (r.status_code, r.json()) == (413, {"error": "request body over 16384 bytes"})
    r = client.post("/api/undo", headers={**auth(tokens["ann"]), "Content-Length": "abc"}, content=b"{}")
    assert (r.status_code, r.json()) == (400, {"error": "Content-Length must be a number of bytes"})


def test_path_parameters_are_validated_as_json_errors(client, tokens):
    r = client.get("/api/assignments/abc", headers=auth(tokens["ann"]))
    assert r.status_code == 422 and r.json()["error"].startswith("path.assignment_id:")


# -- every task ------------------------------------------------------------------------------------------------


@pytest.fixture
def tasks_store(tmp_path):
    s = FeedbackStore(tmp_path / "tasks.sqlite", overlap=1, seed=3)
    s.add_items("ranking", [("Rank these.", ["best", "middle", "worst"])])
    s.add_items("correction", [("Capital of France?", ["Paris.", "Lyon."])])
    s.add_items("rating", [("Tell a joke.", ["Why did the chicken cross the road?"])])
    s.add_items("rules", [("Help me.", ["Sure, here is how."])], rules=["no insults", "no made-up facts"])
    return s


def test_each_task_takes_its_answer_and_refuses_bad_ones(tasks_store, tmp_path):
    from preftune.data.feedback_db import export_rows

    tok = tasks_store.add_annotator("ann")
    c = TestClient(create_app(tasks_store))
    ranking = next_item(c, tok)
    assert ranking["task"] == "ranking"
    for order, msg in (([0, 1], "order must list each of the 3 screen positions 0..2 once, best first"),
                       ([0, 0, 1], "order must list each of the 3 screen positions 0..2 once, best first"),
                       ([0, 1, 2.0], "order must list each of the 3 screen positions 0..2 once, best first")):
        assert submit(c, tok, "rank-bad01", ranking["assignment_id"], {"order": order}).json() == {"error": msg}
    screen = [ranking["responses"].index(t) for t in ("best", "middle", "worst")]
    assert submit(c, tok, "rank-0001", ranking["assignment_id"], {"order": screen}).status_code == 200

    corr = next_item(c, tok)
    assert corr["task"] == "correction"
    paris = "left" if corr["responses"][0] == "Paris." else "right"
    for answer, msg in (({"better": "up", "corrected": "x"}, "better must be 'left' or 'right', got 'up'"),
                        ({"better": paris, "corrected": " "}, "corrected must be the edited (non-empty) text of the better response"),
                        ({"better": paris, "corrected": "Lyon."}, "corrected is identical to a response: edit the better response to improve it")):
        assert submit(c, tok, "corr-bad01", corr["assignment_id"], answer).json() == {"error": msg}
    assert submit(c, tok, "corr-0001", corr["assignment_id"], {"better": paris, "corrected": "Paris is the capital."}).status_code == 200

    rating = next_item(c, tok)
    assert rating["task"] == "rating"
    for value in (0, 8, "5", True, 4.5):
        r = submit(c, tok, "rate-bad01", rating["assignment_id"], {"rating": value})
        assert r.status_code == 422 and r.json() == {"error": f"rating must be a whole number from 1 to 7, got {value!r}"}
    assert submit(c, tok, "rate-0001", rating["assignment_id"], {"rating": 6}, comment="funny").status_code == 200

    rules = next_item(c, tok)
    assert rules["task"] == "rules" and rules["rules"] == ["no insults", "no made-up facts"]
    for answers, msg in (({"no insults": "no"}, "answers must cover exactly this item's 2 rules; missing 1"),
                         ({"no insults": "no", "no made-up facts": "no", "x": "no"}, "answers must cover exactly this item's 2 rules; unknown 1"),
                         ({"no insults": "maybe", "no made-up facts": "no"}, "each rule's answer must be yes, no or unsure, got 'maybe'"),
                         ([], "answers must be an object of rule: yes | no | unsure")):
        assert submit(c, tok, "rule-bad01", rules["assignment_id"], {"answers": answers}).json() == {"error": msg}
    assert submit(c, tok, "rule-0001", rules["assignment_id"],
                  {"answers": {"no insults": "no", "no made-up facts": "yes"}}).status_code == 200
    assert next_item(c, tok) is None
    assert "All done" in c.get(f"/a/{tok}").text

    db = tasks_store.path
    assert export_rows(db, "ranking").rows == [{"prompt": "Rank these.", "responses": ["best", "middle", "worst"]}]
    assert export_rows(db, "correction").rows == [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.",
                                                   "corrected": "Paris is the capital."}]
    assert export_rows(db, "rating").rows == [{"prompt": "Tell a joke.", "response": "Why did the chicken cross the road?", "rating": 6}]
    assert export_rows(db, "rules").rows == [
        {"prompt": "Help me.", "response": "Sure, here is how.", "rule": "no insults", "followed": True},
        {"prompt": "Help me.", "response": "Sure, here is how.", "rule": "no made-up facts", "followed": False}]


def test_text_is_escaped_in_every_task_page(tmp_path):
    s = FeedbackStore(tmp_path / "xss.sqlite", seed=0)
    s.add_items("pairwise", [(XSS_PROMPT, [XSS_RESPONSE, "{{7*7}}"])])
    s.add_items("ranking", [(XSS_PROMPT, [XSS_RESPONSE, "<b>bold</b>", "{{ config }}"])])
    s.add_items("correction", [(XSS_PROMPT, [XSS_RESPONSE, "ok"])])
    s.add_items("rating", [(XSS_PROMPT, [XSS_RESPONSE])])
    s.add_items("rules", [(XSS_PROMPT, [XSS_RESPONSE])], rules=[XSS_RULE, '" onmouseover="alert(2)'])
    tok = s.add_annotator('<script>alert("name")</script>')
    admin = s.add_annotator("admin", admin=True)
    c = TestClient(create_app(s))
    seen = set()
    for n in range(5):
        html = c.get(f"/a/{tok}").text
        item = next_item(c, tok)
        seen.add(item["task"])
        for raw in ('<script>alert("p")</script>', XSS_RESPONSE, "<script>alert('rule')</script>", '<script>alert("name")</script>',
                    '" onmouseover="alert(2)', "<b>bold</b>"):
            assert raw not in html
        assert "&lt;script&gt;alert(&#34;p&#34;)&lt;/script&gt; {{7*7}} {% raw %}" in html  # shown as text, not run as a template
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
        assert "49" not in html and "onerror=alert(1)>" not in html
        if item["task"] == "rules":
            assert "&lt;script&gt;alert(&#39;rule&#39;)&lt;/script&gt; {{ 7*7 }}" in html
            assert 'data-rule="&#34; onmouseover=&#34;alert(2)"' in html
        c.post("/api/submit", headers=auth(tok), json={"submission_id": f"skip-{n:04d}", "assignment_id": item["assignment_id"],
                                                        "answer": {"skip": True}})
    assert seen == {"pairwise", "ranking", "correction", "rating", "rules"}
    stats_html = c.get(f"/stats/{admin}").text
    assert '<script>alert("name")</script>' not in stats_html and "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in stats_html


# -- exports, the trainers' reader and statistics ---------------------------------------------------------------------


def _labelled(tmp_path, labels_by_annotator, strengths=None):
    """A database of 4 pairwise items answered by each annotator with the given canonical labels (0, 1, 'tie')."""
    s = FeedbackStore(tmp_path / "lab.sqlite", overlap=len(labels_by_annotator), seed=5)
    s.add_items("pairwise", [(f"prompt {i}", [f"first {i}", f"second {i}"]) for i in range(4)])
    for name, labels in labels_by_annotator.items():
        who = s.authenticate(s.add_annotator(name))
        for i, label in enumerate(labels):
            item = s.next_assignment(who)
            assert item.item_id == i + 1
            if label == "skip":
                answer = {"skip": True}
            elif label == "tie":
                answer = {"choice": "tie"}
            else:
                answer = {"choice": "left" if item.shown[0] == label else "right"}
                if strengths and strengths[i]:
                    answer["strength"] = strengths[i]
            s.submit(who, f"{name}-{i:06d}", item.id, answer)
    return s


def test_agreement_statistics_hand_computed(tmp_path):
    from preftune.feedback.stats import feedback_stats

    s = _labelled(tmp_path, {"ann": [0, 0, 1, "tie"], "bob": [0, 1, 1, "tie"]})
    a = feedback_stats(s.path)["agreement"]["pairwise"]
    admin = s.add_annotator("admin", admin=True)
    html = re.sub(r">\s+<", "><", TestClient(create_app(s)).get(f"/stats/{admin}").text)
    assert "<tr><td>pairwise</td><td>4</td><td>0.750</td><td>0.636</td><td>0.619</td>" in html
    assert a["units"] == 4 and a["percent_agreement"] == pytest.approx(3 / 4)
    # Cohen: p_o = 3/4, p_e = (2·1 + 1·2 + 1·1)/16 = 5/16
    assert a["cohen_kappa"] == pytest.approx((3 / 4 - 5 / 16) / (1 - 5 / 16))
    # Fleiss: P̄ = (1 + 0 + 1 + 1)/4, p = (3/8, 3/8, 2/8), P_e = 9/64 + 9/64 + 4/64
    assert a["fleiss_kappa"] == pytest.approx((3 / 4 - 22 / 64) / (1 - 22 / 64)) and a["fleiss_raters"] == 2
    # Krippendorff (nominal): α = 1 − (n−1)·Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k = 1 − 7·2 / (64 − 22)
    assert a["krippendorff_alpha"] == pytest.approx(1 - 7 * 2 / 42)


def test_agreement_of_three_annotators_uses_fleiss_and_krippendorff_not_cohen(tmp_path):
    from preftune.feedback.stats import feedback_stats

    s = _labelled(tmp_path, {"a": [0, 0, 1, 1], "b": [0, 0, 1, 0], "c": [0, 1, 1, 1]})
    stats = feedback_stats(s.path)
    a = stats["agreement"]["pairwise"]
    # pairs of annotators agreeing per item: 3, 1, 3, 1 of 3 each
    assert a["percent_agreement"] == pytest.approx(8 / 12) and a["cohen_kappa"] is None
    # Fleiss, n = 3: P_i = 1, 1/3, 1, 1/3 → P̄ = 2/3; p = (6/12, 6/12) → P_e = 1/2
    assert a["fleiss_kappa"] == pytest.approx((2 / 3 - 1 / 2) / (1 / 2)) and a["fleiss_raters"] == 3
    # Krippendorff: each disagreeing unit (m = 3, split 2:1) gives o_01 + o_10 = 2·2/(3−1) = 2; total 4; n_0 = n_1 = 6
    assert a["krippendorff_alpha"] == pytest.approx(1 - 11 * 4 / (2 * 6 * 6))
    assert stats["counts"] == {"a": {"pairwise": 4}, "b": {"pairwise": 4}, "c": {"pairwise": 4}}


def test_exports_pairwise_with_margin_and_judgements_and_the_human_judge_reads_them(tmp_path):
    from preftune.data.feedback_db import export_rows
    from preftune.eval.judges import HumanJudge
    from preftune.feedback.export import write_export

    s = _labelled(tmp_path, {"ann": [0, 1, "tie", "skip"]}, strengths=["much", None, None, None])
    pairs = export_rows(s.path, "pairwise")
    assert pairs.rows == [{"prompt": "prompt 0", "chosen": "first 0", "rejected": "second 0", "margin": 1.0},
                          {"prompt": "prompt 1", "chosen": "second 1", "rejected": "first 1"}]
    assert dict(pairs.dropped) == {"tie (not a preference pair)": 1, "skipped": 1}
    assert pairs.summary() == "2 rows; left out 1 × skipped, 1 × tie (not a preference pair)"
    out = tmp_path / "human.jsonl"
    result = write_export(s.path, "judgements", out)
    assert [json.loads(line)["preference"] for line in out.read_text().splitlines()] == ["a", "b", "tie"]
    assert dict(result.dropped) == {"skipped": 1}
    judge = HumanJudge(out)
    prefs = judge.compare(["prompt 0", "prompt 1", "prompt 2"], ["second 0", "first 1", "first 2"],
                          ["first 0", "second 1", "second 2"]).preferences
    assert prefs == [0.0, 0.0, 0.5]
    assert [r["preference"] for r in export_rows(s.path, "judgements", keep_ties=False).rows] == ["a", "b"]


def test_the_data_reader_reads_a_feedback_database_as_preference_pairs(tmp_path, tasks_store):
    from preftune.data.convert import load_examples

    tok = tasks_store.authenticate(tasks_store.add_annotator("ann"))
    item = tasks_store.next_assignment(tok)  # ranking: best, middle, worst
    tasks_store.submit(tok, "rank-0001", item.id, {"order": [item.shown.index(i) for i in (0, 1, 2)]})
    item = tasks_store.next_assignment(tok)  # correction
    tasks_store.submit(tok, "corr-0001", item.id, {"better": "left" if item.shown[0] == 0 else "right", "corrected": "Paris!"})
    result = load_examples(tasks_store.path, kind="preference")
    assert result.format == "preference"
    assert [(p.chosen, p.rejected) for p in result.examples] == [
        ("best", "middle"), ("best", "worst"), ("middle", "worst"),
        ("Paris!", "Paris."), ("Paris!", "Lyon."), ("Paris.", "Lyon.")]
    assert result.examples[0].source.file == tasks_store.path and result.examples[0].source.row == 1


def test_the_data_reader_names_a_file_that_is_not_a_feedback_database(tmp_path):
    from preftune.data.convert import load_examples
    from preftune.errors import DataError

    bad = tmp_path / "other.sqlite"
    sqlite3.connect(bad).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(DataError, match=r"other.sqlite: is not a preftune feedback database \(no such table: submissions\)"):
        load_examples(bad, kind="preference")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all" * 20)
    with pytest.raises(DataError, match="junk.sqlite: is not a preftune feedback database"):
        load_examples(junk, kind="preference")


def test_stats_with_no_overlap_report_none_not_nan(tmp_path):
    from preftune.feedback.stats import feedback_stats, format_stats

    s = _labelled(tmp_path, {"ann": [0, 1, 0, 0]})
    stats = feedback_stats(s.path)
    assert stats["agreement"]["pairwise"] == {"units": 0, "percent_agreement": None, "cohen_kappa": None, "fleiss_kappa": None,
                                              "fleiss_raters": None, "krippendorff_alpha": None}
    text = format_stats(stats)
    assert "pairwise: 0 units, percent agreement -" in text
    json.dumps(stats, allow_nan=False)  # no NaN reaches the JSON API
