// The metric picker: every key the device sends, grouped as the charts are, with a checkbox
// each. Built when opened (a device may send thousands of keys), kept in step afterwards.

export class Picker {
  /** root: the <details> element; onChange(keys | null): null means "the default again". */
  constructor(root, { onChange }) {
    this.root = root;
    this.onChange = onChange;
    this.groups = [];
    this.selected = new Set();
    this.defaults = [];
    this.built = false;
    this.$ = (id) => root.querySelector(`[data-testid=${id}]`);
    this.list = this.$("picker-groups");
    root.addEventListener("toggle", () => this._build());
    this.list.addEventListener("change", (ev) => {
      const box = ev.target;
      if (!(box instanceof HTMLInputElement) || !box.dataset.key) return;
      if (box.checked) this.selected.add(box.dataset.key);
      else this.selected.delete(box.dataset.key);
      this._count();
      this.onChange([...this.selected]);
    });
    this.$("picker-default").addEventListener("click", () => this.onChange(null));
    this.$("picker-none").addEventListener("click", () => this.onChange([]));
  }

  /** groups: families.js catalogue; selected: keys drawn now; defaults: keys drawn by default. */
  set(groups, selected, defaults) {
    const sameKeys = this.built && keyList(groups) === keyList(this.groups);
    this.groups = groups;
    this.selected = new Set(selected);
    this.defaults = defaults;
    if (!sameKeys) {
      this.built = false;
      this.list.replaceChildren();
    }
    if (this.root.open) this._build();
    for (const box of this.list.querySelectorAll("input[data-key]")) {
      box.checked = this.selected.has(box.dataset.key);
    }
    this._count();
  }

  _count() {
    const all = this.groups.reduce((n, g) => n + g.charts.reduce((m, c) => m + c.keys.length, 0), 0);
    this.$("picker-count").textContent = `(${this.selected.size} of ${all} charted)`;
  }

  _build() {
    if (this.built || !this.root.open) return;
    this.built = true;
    const frag = document.createDocumentFragment();
    for (const g of this.groups) {
      const field = document.createElement("fieldset");
      const legend = document.createElement("legend");
      legend.textContent = g.title;
      field.append(legend);
      for (const c of g.charts) {
        const sub = document.createElement("div");
        sub.className = "picker-chart";
        const title = document.createElement("span");
        title.className = "picker-title";
        title.textContent = c.title;
        sub.append(title);
        for (const key of c.keys) sub.append(checkbox(key, c.names[key], this.selected.has(key)));
        field.append(sub);
      }
      frag.append(field);
    }
    this.list.replaceChildren(frag);
  }
}

function keyList(groups) {
  return groups.map((g) => g.charts.map((c) => c.keys.join("\n")).join("\n")).join("\n");
}

function checkbox(key, name, checked) {
  const label = document.createElement("label");
  label.title = key;
  const box = document.createElement("input");
  box.type = "checkbox";
  box.dataset.key = key;
  box.dataset.testid = "pick";
  box.checked = checked;
  const text = document.createElement("span");
  text.textContent = name;
  label.append(box, text);
  return label;
}
