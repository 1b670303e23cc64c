"""Tags used by google/retiming's html.py; `with tag:` nests what is created inside it."""
import html

_open = []  # the tags whose `with` block is running, innermost last


class _Tag:
  name = 'div'

  def __init__(self, *children, **attributes):
    self.children = list(children)
    self.attributes = attributes
    if _open:
      _open[-1].children.append(self)

  def add(self, child):
    self.children.append(child)
    return child

  def __enter__(self):
    _open.append(self)
    return self

  def __exit__(self, *exc):
    _open.pop()

  def render(self) -> str:
    attributes = ''.join(f' {k.rstrip("_").replace("_", "-")}="{html.escape(str(v))}"'
                         for k, v in self.attributes.items() if v is not False)
    inner = ''.join(c.render() if isinstance(c, _Tag) else html.escape(str(c)) for c in self.children)
    return f'<{self.name}{attributes}>{inner}</{self.name}>'


def _tag(name):
  return type(name, (_Tag,), {'name': name})


meta, h3, table, tr, td, p, a, img, br, video, source, head, body = (
    _tag(n) for n in ('meta', 'h3', 'table', 'tr', 'td', 'p', 'a', 'img', 'br', 'video', 'source', 'head', 'body'))


class document(_Tag):
  name = 'html'

  def __init__(self, title=''):
    super().__init__()
    self.head = head()
    self.body = body()
    self.head.add(_tag('title')(title))
    self.children = [self.head, self.body]

  def __enter__(self):
    _open.append(self.body)
    return self

  def add(self, child):
    return self.body.add(child)

  def render(self) -> str:
    return '<!DOCTYPE html>' + super().render()
