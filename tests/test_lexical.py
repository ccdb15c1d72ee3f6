"""The lexical signal's words: identifiers split as people read them, stop words out, and
BM25 in SQLite's FTS5 ranking a block by the words its names are made of."""

from __future__ import annotations

import sqlite3

from localsym.memory.lexical import LexicalIndex, query_terms, split_identifier, terms


def test_identifiers_split_into_their_words():
    assert split_identifier("get_connection_with_tls_context") == ["get", "connection", "with", "tls", "context"]
    assert split_identifier("proxyHeaders") == ["proxy", "headers"]
    assert split_identifier("HTTPAdapter") == ["http", "adapter"]
    assert split_identifier("parse_http2") == ["parse", "http", "2"]
    assert split_identifier("__init__") == ["init"]
    assert split_identifier("XMLHttpRequest") == ["xml", "http", "request"]


def test_terms_keep_the_whole_name_beside_its_parts():
    assert terms("def build_body(self):") == ["def", "build", "body", "buildbody", "self"]
    assert terms("x" * 60) == []  # a hash or base64 run is no word
    assert terms("sk-a1b2") == ["sk", "a", "1", "b", "2", "a1b2"]  # a dash ends a name


def test_question_words_leave_stop_words_and_the_question_form_out():
    q = "Which function in this code does the following: build the body for a multipart form request?"
    assert query_terms(q) == ["build", "body", "multipart", "form", "request"]


def test_bm25_ranks_the_block_whose_names_match():
    idx = LexicalIndex(sqlite3.connect(":memory:"))
    idx.add(1, "def _encode_files(files, data):\n    body, content_type = encode_multipart_formdata(fields)\n")
    idx.add(2, "def get_netrc_auth(url):\n    netrc_path = os.path.expanduser('~/.netrc')\n", "requests/utils.py")
    idx.add(3, "# the body of the request is built in the following way\nx = 1\n")
    idx.add(4, "def list_domains(self):\n    return [c.domain for c in iter(self)]\n", "cookies.py", ("CookieJar",))
    got = idx.search(query_terms("Which function builds the body of a multipart form request?"), 4)
    assert got[0][0] == 1 and all(s > 0 for _, s in got)
    assert idx.search(query_terms("list all domains in the cookie jar"), 1)[0][0] == 4
    idx.remove([1])
    assert 1 not in {r for r, _ in idx.search(["multipart"], 4)}
    assert idx.search(["or", "near"], 4) == []  # FTS5 operators are quoted, never parsed
