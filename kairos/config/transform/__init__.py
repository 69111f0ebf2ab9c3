"""`request_transformation` / `response_transformation`: three parts along their seams.

- :mod:`~kairos.config.transform.template`: the ``${variable}`` template language of values;
- :mod:`~kairos.config.transform.plan`: the compiled plan the middleware runs per request
  (``$1`` replacements, rewrite memos, slotted rule objects);
- :mod:`~kairos.config.transform.rules`: the pydantic rule shapes config.json is validated against,
  which compile themselves into the plan, and the load-time checks that need the route.

Every name importers used from the former single module is re-exported here.
"""

from kairos.config.transform.plan import (
    MEMO_ENTRIES,
    MEMO_MAX_INPUT,
    BodyOps,
    DottedPath,
    HeaderPass,
    MappingOp,
    PathOp,
    Replacer,
    RequestPlan,
    ResponsePlan,
    RuleOp,
    Test,
    compile_replacement,
    header_pass,
    memoized,
    path_op,
    python_replacement,
)
from kairos.config.transform.rules import (
    DEFAULT_MAX_BODY_BYTES,
    Action,
    BodyRules,
    Condition,
    HeaderRule,
    PathRewrite,
    QueryRule,
    RequestHeaderRule,
    RequestTransformation,
    ResponseHeaderRule,
    ResponseTransformation,
    StatusMapping,
    check_transformations,
)
from kairos.config.transform.template import (
    VARIABLES,
    Lookup,
    Template,
    Variable,
    clean_header_value,
    encode_header_value,
    parse_template,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MEMO_ENTRIES",
    "MEMO_MAX_INPUT",
    "VARIABLES",
    "Action",
    "BodyOps",
    "BodyRules",
    "Condition",
    "DottedPath",
    "HeaderPass",
    "HeaderRule",
    "Lookup",
    "MappingOp",
    "PathOp",
    "PathRewrite",
    "QueryRule",
    "Replacer",
    "RequestHeaderRule",
    "RequestPlan",
    "RequestTransformation",
    "ResponseHeaderRule",
    "ResponsePlan",
    "ResponseTransformation",
    "RuleOp",
    "StatusMapping",
    "Template",
    "Test",
    "Variable",
    "check_transformations",
    "clean_header_value",
    "compile_replacement",
    "encode_header_value",
    "header_pass",
    "memoized",
    "parse_template",
    "path_op",
    "python_replacement",
]
