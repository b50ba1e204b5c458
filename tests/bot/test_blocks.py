"""Block Kit from replies: user text escaped everywhere, limits respected."""

from __future__ import annotations

import json

from bot.blocks import escape, fallback_text, images, reply_blocks
from tunebot.replies import Reply, code, context, fields, image, section, table

EVIL = "<!channel> <!here> <@U123> <https://evil.example|click> & co"


def test_escape() -> None:
    assert escape("a<b>&c") == "a&lt;b&gt;&amp;c"


def test_every_block_kind_escapes_user_text() -> None:
    reply = Reply(text=EVIL, blocks=[section(EVIL), context(EVIL), code(EVIL),
                                     table(["col"], [[EVIL]]), fields([("k", EVIL)]),
                                     image("/tmp/x.png", "chart")])
    rendered = json.dumps(reply_blocks(reply)) + fallback_text(reply)
    for bad in ("<!channel>", "<!here>", "<@U123>", "<https://"):
        assert bad not in rendered
    assert "&lt;!channel&gt;" in rendered
    assert [b["title"] for b in images(reply)] == ["chart"]


def test_long_text_is_clipped_to_slack_limits() -> None:
    blocks = reply_blocks(Reply(text="x", blocks=[section("y" * 10_000), code("z" * 10_000)]))
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks)
    assert blocks[1]["text"]["text"].endswith("```")
