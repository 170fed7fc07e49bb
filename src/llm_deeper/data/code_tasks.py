"""A built-in set of small Python tasks for judging code generation by execution.

Each task is a function to write: its signature and docstring (what the model sees), hidden
unit tests (asserts run against the model's function in the sandbox, evaluation/sandbox.py) and
a reference solution written here, which must pass its own tests (tests/test_code_eval.py), so
a task that nobody can pass is a bug in the task, not a weak model. In the spirit of HumanEval
(Chen et al., 2021), smaller: string, list, number and dictionary exercises a 135M model can
sometimes get right.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodeTask:
    name: str  # the function's name
    signature: str  # "def name(args) -> type:"
    doc: str  # the docstring: what the function must do, with an example
    tests: str  # asserts that call the function
    solution: str  # the body of a reference solution (indented by 4)

    @property
    def prompt(self) -> str:
        return f'{self.signature}\n    """{self.doc}"""\n'

    @property
    def reference(self) -> str:
        return self.prompt + self.solution


def _t(name, args, ret, doc, tests, solution) -> CodeTask:
    return CodeTask(name, f"def {name}({args}) -> {ret}:", doc, tests, solution)


TASKS: tuple[CodeTask, ...] = (
    _t("add", "a: int, b: int", "int", "Return the sum of a and b. add(2, 3) == 5",
       "assert add(2, 3) == 5\nassert add(-4, 4) == 0\nassert add(0, 0) == 0",
       "    return a + b\n"),
    _t("is_even", "n: int", "bool", "Return True if n is even. is_even(4) == True",
       "assert is_even(4)\nassert not is_even(7)\nassert is_even(0)\nassert not is_even(-3)",
       "    return n % 2 == 0\n"),
    _t("reverse_string", "s: str", "str", "Return s reversed. reverse_string('abc') == 'cba'",
       "assert reverse_string('abc') == 'cba'\nassert reverse_string('') == ''",
       "    return s[::-1]\n"),
    _t("max_of_list", "xs: list[int]", "int",
       "Return the largest number in the non-empty list xs. max_of_list([1, 5, 3]) == 5",
       "assert max_of_list([1, 5, 3]) == 5\nassert max_of_list([-2, -9]) == -2",
       "    return max(xs)\n"),
    _t("count_vowels", "s: str", "int",
       "Return how many vowels (a, e, i, o, u, either case) s contains. count_vowels('Hello') == 2",
       "assert count_vowels('Hello') == 2\nassert count_vowels('xyz') == 0\n"
       "assert count_vowels('AEIOU') == 5",
       "    return sum(c in 'aeiouAEIOU' for c in s)\n"),
    _t("factorial", "n: int", "int", "Return n! for n >= 0. factorial(5) == 120",
       "assert factorial(5) == 120\nassert factorial(0) == 1\nassert factorial(1) == 1",
       "    out = 1\n    for i in range(2, n + 1):\n        out *= i\n    return out\n"),
    _t("fibonacci", "n: int", "int",
       "Return the n-th Fibonacci number, fibonacci(0) == 0, fibonacci(1) == 1, "
       "fibonacci(10) == 55",
       "assert fibonacci(0) == 0\nassert fibonacci(1) == 1\nassert fibonacci(10) == 55",
       "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"),
    _t("is_palindrome", "s: str", "bool",
       "Return True if s reads the same backwards. is_palindrome('level') == True",
       "assert is_palindrome('level')\nassert not is_palindrome('abc')\nassert is_palindrome('')",
       "    return s == s[::-1]\n"),
    _t("sum_list", "xs: list[int]", "int", "Return the sum of the numbers in xs. "
       "sum_list([1, 2, 3]) == 6", "assert sum_list([1, 2, 3]) == 6\nassert sum_list([]) == 0",
       "    return sum(xs)\n"),
    _t("square_all", "xs: list[int]", "list[int]",
       "Return a list of the squares of xs, in order. square_all([1, 2, 3]) == [1, 4, 9]",
       "assert square_all([1, 2, 3]) == [1, 4, 9]\nassert square_all([]) == []",
       "    return [x * x for x in xs]\n"),
    _t("filter_positive", "xs: list[int]", "list[int]",
       "Return the numbers of xs that are greater than 0, in order. "
       "filter_positive([-1, 2, 0, 3]) == [2, 3]",
       "assert filter_positive([-1, 2, 0, 3]) == [2, 3]\nassert filter_positive([-5]) == []",
       "    return [x for x in xs if x > 0]\n"),
    _t("word_count", "s: str", "int",
       "Return the number of words in s (separated by whitespace). word_count('a b  c') == 3",
       "assert word_count('a b  c') == 3\nassert word_count('') == 0\n"
       "assert word_count(' hi ') == 1", "    return len(s.split())\n"),
    _t("capitalize_words", "s: str", "str",
       "Return s with the first letter of every word upper-case. "
       "capitalize_words('hello world') == 'Hello World'",
       "assert capitalize_words('hello world') == 'Hello World'\n"
       "assert capitalize_words('a') == 'A'",
       "    return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))\n"),
    _t("gcd", "a: int, b: int", "int",
       "Return the greatest common divisor of two positive integers. gcd(12, 18) == 6",
       "assert gcd(12, 18) == 6\nassert gcd(7, 5) == 1\nassert gcd(10, 10) == 10",
       "    while b:\n        a, b = b, a % b\n    return a\n"),
    _t("is_prime", "n: int", "bool", "Return True if n is a prime number. is_prime(7) == True",
       "assert is_prime(7)\nassert not is_prime(1)\nassert not is_prime(9)\nassert is_prime(2)",
       "    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
       "        if n % i == 0:\n            return False\n        i += 1\n    return True\n"),
    _t("celsius_to_fahrenheit", "c: float", "float",
       "Convert degrees Celsius to Fahrenheit. celsius_to_fahrenheit(100) == 212",
       "assert celsius_to_fahrenheit(100) == 212\nassert celsius_to_fahrenheit(0) == 32\n"
       "assert abs(celsius_to_fahrenheit(-40) + 40) < 1e-9", "    return c * 9 / 5 + 32\n"),
    _t("average", "xs: list[float]", "float",
       "Return the mean of the non-empty list xs. average([1, 2, 3, 4]) == 2.5",
       "assert average([1, 2, 3, 4]) == 2.5\nassert average([5]) == 5",
       "    return sum(xs) / len(xs)\n"),
    _t("unique_sorted", "xs: list[int]", "list[int]",
       "Return the distinct values of xs in increasing order. "
       "unique_sorted([3, 1, 3, 2]) == [1, 2, 3]",
       "assert unique_sorted([3, 1, 3, 2]) == [1, 2, 3]\nassert unique_sorted([]) == []",
       "    return sorted(set(xs))\n"),
    _t("char_frequency", "s: str", "dict",
       "Return a dict mapping each character of s to how often it occurs. "
       "char_frequency('aba') == {'a': 2, 'b': 1}",
       "assert char_frequency('aba') == {'a': 2, 'b': 1}\nassert char_frequency('') == {}",
       "    out = {}\n    for c in s:\n        out[c] = out.get(c, 0) + 1\n    return out\n"),
    _t("flatten", "xss: list[list[int]]", "list[int]",
       "Return the lists of xss joined into one list. flatten([[1, 2], [3]]) == [1, 2, 3]",
       "assert flatten([[1, 2], [3]]) == [1, 2, 3]\nassert flatten([]) == []\n"
       "assert flatten([[], [4]]) == [4]", "    return [x for xs in xss for x in xs]\n"),
    _t("second_largest", "xs: list[int]", "int",
       "Return the second largest distinct value of xs (it has at least two). "
       "second_largest([4, 1, 4, 3]) == 3",
       "assert second_largest([4, 1, 4, 3]) == 3\nassert second_largest([1, 2]) == 1",
       "    return sorted(set(xs))[-2]\n"),
    _t("count_occurrences", "xs: list[int], x: int", "int",
       "Return how many times x occurs in xs. count_occurrences([1, 2, 1], 1) == 2",
       "assert count_occurrences([1, 2, 1], 1) == 2\nassert count_occurrences([], 3) == 0",
       "    return xs.count(x)\n"),
    _t("remove_duplicates", "xs: list[int]", "list[int]",
       "Return xs without repeated values, keeping the first occurrence of each, in order. "
       "remove_duplicates([1, 2, 1, 3, 2]) == [1, 2, 3]",
       "assert remove_duplicates([1, 2, 1, 3, 2]) == [1, 2, 3]\n"
       "assert remove_duplicates([]) == []",
       "    seen, out = set(), []\n    for x in xs:\n        if x not in seen:\n"
       "            seen.add(x)\n            out.append(x)\n    return out\n"),
    _t("digits_sum", "n: int", "int",
       "Return the sum of the decimal digits of n >= 0. digits_sum(1234) == 10",
       "assert digits_sum(1234) == 10\nassert digits_sum(0) == 0\nassert digits_sum(9) == 9",
       "    return sum(int(d) for d in str(n))\n"),
    _t("is_anagram", "a: str, b: str", "bool",
       "Return True if a and b contain the same letters the same number of times. "
       "is_anagram('listen', 'silent') == True",
       "assert is_anagram('listen', 'silent')\nassert not is_anagram('ab', 'abb')",
       "    return sorted(a) == sorted(b)\n"),
    _t("fizzbuzz", "n: int", "str",
       "Return 'Fizz' if n is divisible by 3, 'Buzz' if by 5, 'FizzBuzz' if by both, "
       "else str(n). fizzbuzz(15) == 'FizzBuzz'",
       "assert fizzbuzz(15) == 'FizzBuzz'\nassert fizzbuzz(9) == 'Fizz'\n"
       "assert fizzbuzz(10) == 'Buzz'\nassert fizzbuzz(7) == '7'",
       "    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n"
       "        return 'Fizz'\n    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)\n"),
    _t("running_sum", "xs: list[int]", "list[int]",
       "Return the running totals of xs. running_sum([1, 2, 3]) == [1, 3, 6]",
       "assert running_sum([1, 2, 3]) == [1, 3, 6]\nassert running_sum([]) == []",
       "    out, total = [], 0\n    for x in xs:\n        total += x\n        out.append(total)\n"
       "    return out\n"),
    _t("merge_dicts", "a: dict, b: dict", "dict",
       "Return a new dict with the items of a and b; b wins where both have a key. "
       "merge_dicts({'x': 1}, {'x': 2, 'y': 3}) == {'x': 2, 'y': 3}",
       "assert merge_dicts({'x': 1}, {'x': 2, 'y': 3}) == {'x': 2, 'y': 3}\n"
       "a = {'k': 1}\nmerge_dicts(a, {'k': 5})\nassert a == {'k': 1}",
       "    return {**a, **b}\n"),
    _t("longest_word", "s: str", "str",
       "Return the longest word of s (the first one if several are as long). "
       "longest_word('a quick fox') == 'quick'",
       "assert longest_word('a quick fox') == 'quick'\nassert longest_word('hi yo') == 'hi'",
       "    return max(s.split(), key=len)\n"),
    _t("binary_string", "n: int", "str",
       "Return n >= 0 written in binary, without a prefix. binary_string(5) == '101'",
       "assert binary_string(5) == '101'\nassert binary_string(0) == '0'\n"
       "assert binary_string(8) == '1000'", "    return bin(n)[2:]\n"),
    _t("clamp", "x: float, lo: float, hi: float", "float",
       "Return x limited to the range [lo, hi]. clamp(5, 0, 3) == 3",
       "assert clamp(5, 0, 3) == 3\nassert clamp(-1, 0, 3) == 0\nassert clamp(2, 0, 3) == 2",
       "    return max(lo, min(hi, x))\n"),
    _t("title_case_count", "words: list[str]", "int",
       "Return how many strings of words start with an upper-case letter. "
       "title_case_count(['Hi', 'yo', 'Ok']) == 2",
       "assert title_case_count(['Hi', 'yo', 'Ok']) == 2\nassert title_case_count([]) == 0\n"
       "assert title_case_count(['']) == 0",
       "    return sum(1 for w in words if w[:1].isupper())\n"),
)
