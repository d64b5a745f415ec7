"""The chat feature's routes, assembled in one place. Each module holds one concern:

- `page_routes`: the chat page, search, one conversation, export (reading);
- `turn_routes`: a new conversation, a question, regenerate, edit, Stop (asking);
- `stream_routes`: the SSE answer stream;
- `conversation_routes`: adapter, settings, knowledge bases, rename, delete (changing one).

What they share (the conversation dependency, the page context, redirects, input errors) is
`app.chat.web`. CSRF is checked by CurrentUser (every route needs it), after the sign-in check.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.chat import conversation_routes, export, page_routes, stream_routes, turn_routes
from app.web.templating import templates

templates.env.globals["answer_ending"] = export.ending

router = APIRouter()
for _part in (page_routes, turn_routes, stream_routes, conversation_routes):
    router.include_router(_part.router)
