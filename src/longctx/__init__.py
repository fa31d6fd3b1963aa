"""longctx: long-context sequence-modelling methods, each checked against an exact reference.

Layers of the package (imports only point down): cli -> arena -> tasks -> models -> layers ->
position -> ops. See DESIGN.md in the project's shared folder and README.md.
"""

__version__ = "0.1.0"
