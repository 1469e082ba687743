"""Patient self-report (no account): only the questionnaire a single-use link asks for.

dashboard.py runs this page alone when the address carries ?token=...; it shows no
patient data at all (not even the name), and fits a phone screen.
"""
import streamlit as st

from analytics import scales, selfreport
from pages._context import db_file as db_path

FREQUENCY = ("Not at all", "Several days", "More than half the days", "Nearly every day")
DIFFICULTY = ("Not difficult at all", "Somewhat difficult", "Very difficult", "Extremely difficult")
STEM = "Over the last 2 weeks, how often have you been bothered by any of the following problems?"

st.set_page_config(page_title="Questionnaire", layout="centered", initial_sidebar_state="collapsed")

token = str(st.query_params.get("token", ""))[:200]
# Per-session memory, keyed by the token's hash so a second link in the same browser starts afresh.
key = "self_report:" + selfreport.hash_token(token)[:16]
state = st.session_state.setdefault(key, {})

if "done" in state:
    st.title("Thank you")
    if state["done"]["crisis_message"]:
        st.error(state["done"]["crisis_message"], icon=":material/emergency:")
    st.success("Your answers were sent to your care team. You can close this page.")
    st.stop()

if "link" not in state:
    try:
        state["link"] = selfreport.open_link(db_path(), token)  # audited once per visit
    except selfreport.LinkRefused as refused:
        st.title("Questionnaire")
        st.warning(str(refused))
        st.stop()
    except FileNotFoundError:
        st.title("Questionnaire")
        st.warning("This service is not available right now. Please try again later or contact your clinic.")
        st.stop()
link = state["link"]

st.title("Questionnaire")
st.write("Please answer every question. Your answers go to your care team; this form can be sent once.")

answers: dict[str, dict[int, int | None]] = {}
slots = {}
with st.form("self_report"):
    for code in link.instruments:
        scale = scales.get(code)
        st.subheader(code)
        st.write(STEM)
        answers[code] = {}
        for n in scale.all_items:
            optional = n in scale.extra_items
            options = DIFFICULTY if optional else FREQUENCY
            label = f"{n}. {scale.item_labels[n - 1]}" + (" (optional)" if optional else "")
            answers[code][n] = st.radio(label, range(len(options)), format_func=lambda i, o=options: o[i],
                                        index=None, key=f"{key}:{code}:{n}")
            slots[f"{code} item_{n}"] = st.empty()
    slots["form"] = st.empty()
    sent = st.form_submit_button("Send my answers", type="primary", width="stretch")

if sent:
    try:
        result = selfreport.submit(db_path(), token, answers)
    except selfreport.LinkRefused as refused:
        state.pop("link", None)
        slots["form"].warning(str(refused))
        st.stop()
    if result.ok:
        state["done"] = {"crisis_message": result.crisis_message}
        st.rerun()
    for field, reason in result.errors.items():
        if field != "form":
            (slots.get(field) or slots["form"]).error(reason)
    slots["form"].error(result.errors.get("form") or "Some answers are missing or not valid: see the notes above. "
                        "Nothing was sent yet.")
