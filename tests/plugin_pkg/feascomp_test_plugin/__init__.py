"""A third-party pass for the plug-in test: records each family's number of out-edge families."""
import dataclasses


@dataclasses.dataclass(frozen=True)
class AnnotateDegreePass:
    """Annotate each family with its number of outgoing edge families."""

    name = "annotate-degree"
    input_level = "feasibility"
    output_stage = "feasibility"

    def run(self, m):
        fams = tuple(
            dataclasses.replace(f, attrs=tuple(a for a in f.attrs if a[0] != "out_families") + (("out_families", len(m.out_edges(f.name))),))
            for f in m.families
        )
        return m.replace(families=fams)
